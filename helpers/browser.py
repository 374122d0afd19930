"""The service's chat page in a real, headless browser: Debian's Chromium driven by playwright.

``10_deployment.ipynb`` asks its assistant a question through the page (its ``ask_in_chat_page``)
and shows the screenshot;
``tests/test_browser.py`` drives the same page further (hostile text, the Stop button). Nothing is
downloaded: playwright drives the system Chromium through ``executable_path``.
"""

from __future__ import annotations

import os
import shutil

CHROMIUM_ARGS = [  # no network here: keep Chromium from calling home
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
REPLY_DONE = "() => document.getElementById('status').textContent === 'done'"


class BrowserUnavailable(RuntimeError):
    """There is no Chromium or no playwright on this machine."""


def find_chromium() -> str:
    """The system Chromium's path (``$CHROMIUM`` first); :class:`BrowserUnavailable` when there is none."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise BrowserUnavailable("no chromium on PATH (Debian: apt-get install chromium)")
    return path


def open_chat_page(page, url: str, api_key: str | None, timeout_s: float = 60) -> None:
    """Load the page at ``url`` and give it the key when the server asks for one, as a person would."""
    page.goto(url)
    if api_key:
        page.wait_for_selector("#key-form:not([hidden])", timeout=timeout_s * 1000)
        page.fill("#key", api_key)
        page.click("#key-save")
    page.wait_for_function("() => document.getElementById('model').textContent.startsWith('model: ')",
                           timeout=timeout_s * 1000)


def send_message(page, text: str, max_tokens: int, temperature: float | None = None) -> None:
    """Type ``text`` into the page, set its controls, press Send."""
    page.fill("#max-tokens", str(max_tokens))
    if temperature is not None:
        page.fill("#temperature", str(temperature))
    page.fill("#prompt", text)
    page.click("#send")

