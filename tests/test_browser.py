"""The course in a real browser, headless Chromium: notebook 01 in JupyterLab, and the service's chat page.

Runs a copy of ``01_mse_and_gradient_descent.ipynb`` (``Run > Run All Cells``, in ``smoke``
mode), waits for the learning-rate explorer's sliders to render, moves α by keyboard and by
typing into its readout, and checks that the figure above the sliders (an ordinary output, so
static readers see it too) is redrawn in place. Saves a screenshot to
``artifacts/browser/notebook01.png`` (``-failure.png`` when it fails). Then the chat page
(``helpers.browser`` drives it): text shown as text, a reply streamed in pieces, Stop counted.

Needs Debian's ``chromium`` and the ``playwright`` package (no browser download: Playwright
drives the system Chromium through ``executable_path``). Locally the test is skipped, with
the reason, when either is missing; in CI (``CI=true``) it fails instead, so it cannot
silently stop running there. ``.ci/run`` installs both. Marked ``slow``: ``pytest -m "not slow"``
leaves it out of the quick local loop; ``make test`` and CI run it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from helpers.browser import CHROMIUM_ARGS, REPLY_DONE, BrowserUnavailable, find_chromium, open_chat_page, send_message
from helpers.settings import get_settings

NOTEBOOK = "01_mse_and_gradient_descent.ipynb"
LAB_SETTINGS = {  # every cell stays in the page; never ask which kernel; no news or update checks (offline)
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none", "autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
SERVER_START_S, RUN_ALL_S, REDRAW_S, START_S, RUN_ALL_TRIES, KERNEL_STEADY_S = 120, 180, 60, 60, 3, 8


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"the browser test cannot run in CI: {reason} (.ci/run installs it)")
    pytest.skip(reason)


def _chromium() -> str:
    try:
        return find_chromium()
    except BrowserUnavailable as why:
        _unavailable(str(why))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return 0


def _start_lab(folder: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    settings_dir = folder.parent / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(
        os.environ,
        COURSE_MODE="smoke",
        COURSE_ARTIFACTS=str(folder.parent / "artifacts"),  # the run writes nothing into the repository
        JUPYTER_RUNTIME_DIR=str(folder.parent / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings_dir),
        JUPYTERLAB_WORKSPACES_DIR=str(folder.parent / "workspaces"),
        TQDM_DISABLE="1",
    )
    env.pop("MPLBACKEND", None)  # the notebook chooses its own (inline) backend
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--ServerApp.port_retries=0",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--allow-root",  # CI containers run as root
    ]
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        if _get(f"http://127.0.0.1:{port}/api/status?token={token}") == 200:
            return server
        time.sleep(0.5)
    _stop_lab(server, port, token)
    raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop_lab(server: subprocess.Popen, port: int, token: str) -> None:
    """Shut the server and its kernels down; kill whatever is left of them."""
    import psutil

    try:
        children = psutil.Process(server.pid).children(recursive=True)  # the kernels
    except psutil.NoSuchProcess:
        children = []
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/shutdown?token={token}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10).close()
        server.wait(timeout=30)
    except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
        pass
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=10)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)


def _dismiss_dialogs(page, seen: list[str]) -> None:
    """Close any modal JupyterLab dialog ("Select Kernel" on a slow start, "Kernel Restarting"...),
    which would take the menus' clicks; its text goes into ``seen`` for the failure message."""
    accepted = set()
    for _ in range(5):
        dialog = page.locator(".jp-Dialog")
        if not dialog.count():
            return
        text = " ".join(dialog.last.inner_text().split())[:200]  # the topmost one
        seen.append(text)
        accept = dialog.last.locator(".jp-mod-accept")
        if accept.count() and text not in accepted:
            accepted.add(text)
            accept.first.click(timeout=5_000)
        else:  # no accept button, or accepting did not close it: dismiss it
            page.keyboard.press("Escape")
        page.wait_for_timeout(500)


def _choose(page, menu: str, item: str, seen: list[str]) -> None:
    """Menu > item, closing dialogs that pop up in between (they can appear at any moment)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    deadline = time.monotonic() + START_S
    while True:
        _dismiss_dialogs(page, seen)
        try:
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click(timeout=5_000)
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click(timeout=5_000)
            return
        except PlaywrightTimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not choose {menu} > {item} in {START_S} s; dialogs seen: {seen}") from None
            page.keyboard.press("Escape")  # close a half-open menu before the next try


def _settled_kernel(base: str, token: str) -> None:
    """Wait until the notebook's session keeps one kernel for KERNEL_STEADY_S.

    Just after the page opens, JupyterLab can start a kernel and swap it for another a few
    seconds later; cells queued on the first one are then lost."""
    deadline, last, since = time.monotonic() + SERVER_START_S, None, time.monotonic()
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as response:
            kernels = [session["kernel"]["id"] for session in json.load(response) if session.get("kernel")]
        if kernels != last:
            last, since = kernels, time.monotonic()
        elif len(kernels) == 1 and time.monotonic() - since >= KERNEL_STEADY_S:
            return
        time.sleep(0.5)
    raise AssertionError(f"the notebook's kernel did not settle within {SERVER_START_S} s: {last}")


def _run_all_and_move_alpha(page, base: str, token: str) -> dict:
    """Open the notebook, run every cell, change α; return what was seen before and after."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=SERVER_START_S * 1000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=SERVER_START_S * 1000)
    dialogs: list[str] = []
    explorer = page.locator(".learning-rate-explorer").first
    for _ in range(RUN_ALL_TRIES):  # on a loaded machine the kernel can report idle before it takes requests
        _dismiss_dialogs(page, dialogs)
        _settled_kernel(base, token)
        _choose(page, "Run", "Run All Cells", dialogs)
        try:
            explorer.wait_for(timeout=RUN_ALL_S * 1000)
            break
        except PlaywrightTimeoutError:
            continue
    else:
        raise AssertionError(f"Run > Run All Cells never showed the explorer, {RUN_ALL_TRIES} tries; dialogs: {dialogs}")

    explorer.scroll_into_view_if_needed()
    cell = page.locator(".jp-CodeCell", has=page.locator(".learning-rate-explorer")).first
    alpha = explorer.locator(".widget-slider", has=page.locator(".widget-label", has_text="α"))
    plot = cell.locator(".jp-OutputArea-output img")
    plot.first.wait_for(timeout=REDRAW_S * 1000)
    seen = {
        "sliders": explorer.locator(".widget-slider").count(),
        "figures": plot.count(),
        "alpha_before": alpha.locator(".widget-readout").inner_text().strip(),
        "plot_before": plot.first.get_attribute("src"),
    }

    def wait_for_redraw(previous: str) -> str:
        page.wait_for_function(
            "([el, old]) => { const img = el.querySelector('.jp-OutputArea-output img'); return img && img.src !== old; }",
            arg=[cell.element_handle(), previous],
            timeout=REDRAW_S * 1000,
        )
        return plot.first.get_attribute("src")

    _dismiss_dialogs(page, dialogs)  # nothing may sit over the sliders
    # one keyboard step on the slider's handle, as a learner would
    alpha.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    seen["plot_after_key"] = wait_for_redraw(seen["plot_before"])
    seen["alpha_after_key"] = alpha.locator(".widget-readout").inner_text().strip()

    # then a value typed into the readout: past the stable range
    readout = alpha.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("0.95")
    page.keyboard.press("Enter")
    seen["plot_after_typed"] = wait_for_redraw(seen["plot_after_key"])
    seen["alpha_after_typed"] = readout.inner_text().strip()
    seen["figures_after"] = plot.count()
    explorer.scroll_into_view_if_needed()
    return seen


@pytest.mark.slow
def test_learning_rate_widget_renders_and_responds(tmp_path):
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e .[dev])")

    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.read(get_settings().repo_root / "notebooks" / NOTEBOOK, as_version=4)
    last = max(i for i, cell in enumerate(nb.cells) if "learning_rate_explorer(" in cell.source)
    nb.cells = nb.cells[: last + 1]  # the cells after the explorer would keep the kernel busy before it redraws
    for cell in nb.cells:  # no committed outputs: whatever renders comes from this run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, folder / NOTEBOOK)
    screenshots = get_settings().artifacts_dir / "browser"
    screenshots.mkdir(parents=True, exist_ok=True)

    port, token, log = _free_port(), secrets.token_hex(16), tmp_path / "jupyter.log"
    server = _start_lab(folder, port, token, log)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                try:
                    seen = _run_all_and_move_alpha(page, f"http://127.0.0.1:{port}", token)
                except Exception:
                    page.screenshot(path=str(screenshots / "notebook01-failure.png"))
                    print(log.read_text()[-5000:])
                    raise
                page.screenshot(path=str(screenshots / "notebook01.png"))
                (screenshots / "notebook01-failure.png").unlink(missing_ok=True)
            finally:
                browser.close()
    finally:
        _stop_lab(server, port, token)

    assert seen["sliders"] == 2, "the explorer should show two sliders: α and steps"
    assert seen["alpha_before"] == "0.10"
    assert seen["alpha_after_key"] == "0.11", "one ArrowRight on the handle moves α by its step, 0.01"
    assert seen["alpha_after_typed"] == "0.95"
    assert seen["plot_before"] != seen["plot_after_key"] != seen["plot_after_typed"], "the plot must redraw"
    assert seen["plot_before"].startswith("data:image/png")
    assert seen["figures"] == seen["figures_after"] == 1, "one figure, redrawn in place, not a new one per change"
    assert server.poll() is not None, "jupyter lab is still running"


# --------------------------------------------------------------------------- the service's chat page

CHAT_KEY = "page-test-key"
HOSTILE = "<img src=x onerror=\"window.__pwned = 1\"> & <b>bold?</b>"
COUNT_PIECES = """() => {  // every distinct text the newest reply shows, as it streams
  window.__pieces = [];
  new MutationObserver(() => {
    const replies = document.querySelectorAll('.assistant .content');
    const text = replies.length ? replies[replies.length - 1].textContent : '';
    if (text && window.__pieces[window.__pieces.length - 1] !== text) window.__pieces.push(text);
  }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
}"""


def _metric(url: str, name: str) -> float:
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {CHAT_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def drive_chat_page(page, url: str, screenshot: Path) -> dict:
    """The chat page as a person uses it: give the key, ask, watch the reply stream, stop a long one."""
    seen: dict = {"console": []}
    page.on("console", lambda message: seen["console"].append(message.text))
    open_chat_page(page, url, CHAT_KEY, START_S)  # the server has a key: the page asks for it
    seen["model"] = page.inner_text("#model")
    page.evaluate(COUNT_PIECES)

    send_message(page, HOSTILE, max_tokens=24)
    page.wait_for_function(REPLY_DONE, timeout=REDRAW_S * 1000)
    seen["user_text"] = page.locator(".user .content").first.text_content()
    seen["images"] = page.locator("#log img, #log b").count()
    seen["pwned"] = page.evaluate("() => window.__pwned === undefined ? null : window.__pwned")
    seen["pieces"] = page.evaluate("() => window.__pieces.length")
    seen["speed"] = page.inner_text("#speed")

    page.evaluate("() => { window.__pieces = []; }")
    send_message(page, "Tell me a long story.", max_tokens=150)
    page.wait_for_function("() => window.__pieces.length >= 6", timeout=REDRAW_S * 1000)  # mid-stream
    seen["stop_enabled"] = page.is_enabled("#stop")
    page.click("#stop")
    page.wait_for_function("() => document.getElementById('status').textContent === 'stopped'",
                           timeout=REDRAW_S * 1000)
    deadline = time.monotonic() + REDRAW_S
    while _metric(url, "course_cancelled_requests_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    seen["cancelled"] = _metric(url, "course_cancelled_requests_total")
    seen["generated"] = _metric(url, "course_generated_tokens_total")
    seen["send_enabled"] = page.is_enabled("#send")
    page.screenshot(path=str(screenshot))
    return seen


@pytest.mark.slow
def test_the_chat_page_streams_stops_and_shows_text_as_text(tmp_path):
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e .[dev])")
    import threading

    from helpers.deployment import CHAT_TEMPLATE
    from helpers.models import tiny_base_dir
    from helpers.serving import ServingLimits, build_app, make_server

    limits = ServingLimits()
    app = build_app(tiny_base_dir(), api_key=CHAT_KEY, limits=limits, device="cpu", chat_template=CHAT_TEMPLATE,
                    model_id="tiny")
    engine, forward = app.state.engine, app.state.engine._forward

    def readable_forward(*args, **kwargs):  # 30 ms a token, and never the end of the text: a long reply to stop
        time.sleep(0.03)
        logits = forward(*args, **kwargs)
        logits[..., engine.tokenizer.eos_token_id] = float("-inf")
        return logits

    engine._forward = readable_forward
    port = _free_port()
    server = make_server(app, limits, port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    screenshots = get_settings().artifacts_dir / "browser"
    screenshots.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 900, "height": 800})
                try:
                    seen = drive_chat_page(page, url, screenshots / "chat_page.png")
                except Exception:
                    page.screenshot(path=str(screenshots / "chat_page-failure.png"))
                    raise
                (screenshots / "chat_page-failure.png").unlink(missing_ok=True)
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(START_S)

    assert seen["model"] == "model: tiny"
    assert seen["user_text"] == HOSTILE and seen["images"] == 0 and seen["pwned"] is None  # characters, not HTML
    assert seen["pieces"] >= 3, "the reply should appear in pieces, not in one block"
    assert "tokens/s" in seen["speed"]
    assert seen["cancelled"] == 1, "the server should count the stopped reply as abandoned"
    assert seen["stop_enabled"], "the long reply should still be running when Stop is pressed"
    assert seen["generated"] < 24 + 150, "the stopped reply should not have run to max_tokens"
    assert seen["send_enabled"]
    assert not [m for m in seen["console"] if "Content Security Policy" in m], seen["console"]
