"""``python -m helpers.serving``: the service under uvicorn, and a way to start it in the background.

Introduced in ``10_deployment.ipynb``. Every command-line mistake is one line that names it.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from transformers.utils import logging as transformers_logging
from uvicorn.protocols.http.h11_impl import H11Protocol

from helpers.serving.app import build_app
from helpers.serving.limits import ServingLimits

logger = logging.getLogger("helpers.serving")

API_KEY_ENV = "COURSE_API_KEY"
DESCRIPTION = ("An OpenAI-compatible completion and chat service (with a chat page at /) for a released model, with "
               "continuous batching; or a /v1/classify service for a sequence classifier.")


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than
    ``header_timeout_s`` to arrive (uvicorn waits for them forever: a "slow loris" client could
    hold every connection open). The clock starts when the connection opens and again after
    each answer, for the next request on a kept-alive connection."""

    header_timeout_s = ServingLimits.header_timeout_s
    _header_timer = None
    _waiting_after = None  # the cycle (request) that was current when the clock started

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_header_clock()

    def on_response_complete(self) -> None:
        self._start_header_clock()  # before super(): it may start a pipelined request, which stops the clock
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_timer is not None and self.cycle is not self._waiting_after:  # headers complete
            self._stop_header_clock()

    def connection_lost(self, exc) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        self._waiting_after = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is self._waiting_after and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            logger.info("closed the connection from %s: no complete request headers within %g s", client,
                        self.header_timeout_s)
            self.transport.close()


def make_server(app, limits: ServingLimits, host: str = "127.0.0.1", port: int = 8000,
                log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app`` with the limits' header timeout. Introduced in ``10_deployment.ipynb``.

    Run it with ``server.run()`` (or ``server.run(sockets=[sock])`` on a socket bound already).
    On SIGTERM it finishes open requests (up to the generation timeout) before it stops.
    """
    protocol = type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,),
                    {"header_timeout_s": limits.header_timeout_s})
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol, lifespan="on",
                            timeout_graceful_shutdown=math.ceil(limits.generation_timeout_s))
    return uvicorn.Server(config)


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so that a taken port is said at once.

    Made with ``proto=IPPROTO_TCP``: asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only on
    connections whose socket says it is TCP, and with Nagle on, a stream's small writes on a kept-alive
    connection wait for the client's delayed ACK (40 ms on Linux) before they leave.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror or error}); pick another --port or "
                      "--host") from None
    return sock


# --------------------------------------------------------------------------- the command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage too; one line that names the mistake is enough
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, low: float | None = None, high: float | None = None, what: str = "a number"):
    """An argparse type: ``kind(text)``, within ``low``..``high`` when given (the limits check their own)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if low is not None and (value < low or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: use {low:g} to {high:g}" if high is not None
                                             else f"{text} is out of range: use a value of at least {low:g}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    limits = ServingLimits()
    parser = _Parser(prog="python -m helpers.serving", description=DESCRIPTION)
    parser.add_argument("--model", required=True, help="release folder (written by export_release): a causal LM "
                                                       "(completions, chat, the page at /) or a sequence classifier "
                                                       "(/v1/classify), told apart by its config")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=_number(int, 1, 65535, "a port number"), default=8000,
                        help="TCP port (default: 8000)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, if set)")
    parser.add_argument("--adapter", help="a LoRA adapter folder (save_pretrained's), merged into --model at load")
    parser.add_argument("--model-id", help="the name clients pass as model (default: the folder's name, the "
                                           "adapter's with --adapter)")
    parser.add_argument("--tokenizer", help="tokenizer folder, when the model folder has none")
    parser.add_argument("--chat-template", help="Jinja chat template file for /v1/chat/completions "
                                                "(default: the release's own)")
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--int8", action="store_true", help="serve an int8 dynamic-quantized copy (CPU)")
    parser.add_argument("--max-batch-size", type=_number(int, what="a whole number"),
                        default=limits.max_batch_size,
                        help=f"requests decoded together; 1 serves one at a time (default: {limits.max_batch_size})")
    parser.add_argument("--max-tokens-cap", type=_number(int, what="a whole number"),
                        default=limits.max_tokens_cap,
                        help=f"the largest max_tokens a request may ask for (default: {limits.max_tokens_cap})")
    parser.add_argument("--timeout", type=_number(float), default=limits.generation_timeout_s,
                        help=f"seconds a request may take, queue included (default: {limits.generation_timeout_s:g})")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.serving --model DIR [--adapter DIR]``: serve a release with uvicorn until Ctrl-C or SIGTERM."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    transformers_logging.disable_progress_bar()  # a server log is no place for progress bars
    if not _is_loopback(args.host) and not args.api_key:
        logger.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                       "(set --api-key or %s)", args.host, API_KEY_ENV)
    sock = None
    try:
        limits = ServingLimits(max_tokens_cap=args.max_tokens_cap, generation_timeout_s=args.timeout,
                               default_max_tokens=min(ServingLimits.default_max_tokens, args.max_tokens_cap),
                               max_batch_size=args.max_batch_size)
        sock = _bind(args.host, args.port)
        app = build_app(args.model, api_key=args.api_key, limits=limits, model_id=args.model_id,
                         tokenizer_dir=args.tokenizer, device=args.device, int8=args.int8,
                         chat_template=args.chat_template, adapter_dir=args.adapter)
    except (OSError, ValueError, RuntimeError) as error:  # FileNotFoundError is an OSError
        if sock is not None:
            sock.close()
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    # uvicorn shuts down gracefully on SIGTERM/Ctrl-C (finishes open requests, runs the lifespan's
    # clean-up), then raises the signal again; these handlers turn that into a quiet exit code.
    signal.signal(signal.SIGTERM, _exit_with(0))
    signal.signal(signal.SIGINT, _exit_with(130))
    make_server(app, limits, args.host, args.port, args.log_level).run(sockets=[sock])
    return 0


def _exit_with(code: int):
    def handler(signum, frame):
        raise SystemExit(code)

    return handler


# --------------------------------------------------------------------------- in the background


@dataclass
class BackgroundServer:
    """A ``python -m helpers.serving`` process started by :func:`start_background`.

    Introduced in ``10_deployment.ipynb``; the live tests and ``bench/bench_serving.py`` use it too.
    """

    process: subprocess.Popen
    url: str
    log_path: Path

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """Graceful stop (SIGTERM: uvicorn finishes open requests), a kill if it hangs; returns the exit code."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_background(
    model_dir: str | os.PathLike,
    api_key: str | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 120,
) -> BackgroundServer:
    """Start the service on 127.0.0.1 in a separate process and wait until ``/health`` answers.

    Introduced in ``10_deployment.ipynb``. The key travels in the ``COURSE_API_KEY`` environment
    variable, not on the command line (where ``ps`` would show it). The process is stopped at
    interpreter exit at the latest, so a notebook never leaves a server behind. A server that
    dies or does not answer in ``startup_timeout`` seconds is a ``RuntimeError`` carrying its log.
    """
    port = port or free_port()
    log_path = Path(tempfile.mkdtemp(prefix="course-server-")) / "server.log"
    env = {**os.environ, API_KEY_ENV: api_key} if api_key else {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    command = [sys.executable, "-m", "helpers.serving", "--model", str(model_dir), "--port", str(port), *extra_args]
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = BackgroundServer(process, f"http://127.0.0.1:{port}", log_path)
    atexit.register(server.stop)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if not server.running:
            raise RuntimeError(f"the server exited with {process.returncode} before answering:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"the server did not answer /health within {startup_timeout:.0f} s:\n{server.log()}")
