"""The chat page at ``GET /``: one static HTML file, and the Content-Security-Policy that pins it.

Introduced in ``10_deployment.ipynb``. The page (``static/chat.html``) holds its own style and
plain JavaScript, fetches nothing but this server's API, and inserts every message as text. The
policy allows exactly its inline ``<script>`` and ``<style>`` (by their SHA-256), connections to
this origin only, and no images, frames, forms or plugins.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


@cache
def chat_page() -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy header. Introduced in ``10_deployment.ipynb``."""
    html = files("helpers.serving").joinpath("static/chat.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, flags=re.S)
    policy = (f"default-src 'none'; script-src {' '.join(map(_sha256, scripts))}; "
              f"style-src {' '.join(map(_sha256, styles))}; connect-src 'self'; img-src 'none'; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'none'")
    return html, policy
