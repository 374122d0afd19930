"""The HTTP side: FastAPI routes in OpenAI's shape in front of the batching engine.

Introduced in ``10_deployment.ipynb``. Every client mistake is a 4xx in OpenAI's error shape;
anything unexpected is a JSON 500 and the service keeps serving; a client that leaves stops
its generation within one decoding step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import jinja2
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.deployment import quantize_int8
from helpers.lora import check_adapter_folder, merge_adapter
from helpers.runtime import pick_device
from helpers.serving import schema
from helpers.serving.engine import Engine, QueueFull, Result, SamplingParams
from helpers.serving.engine import Request as EngineRequest
from helpers.serving.metrics import ServingMetrics, new_metrics
from helpers.serving.schema import APIError, ChatCompletionRequest, CompletionRequest, Shape

logger = logging.getLogger("helpers.serving")

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of the service, and how much waiting it tolerates.

    Introduced in ``10_deployment.ipynb``. The prompt may use at most the model's context
    (``config.n_positions``) minus the request's ``max_tokens``.
    """

    max_tokens_cap: int = 256  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16  # OpenAI's default for /v1/completions
    max_body_bytes: int = 64 * 1024  # checked before the body is parsed
    generation_timeout_s: float = 30.0  # from arrival (queue included) to the last token: then 504
    max_batch_size: int = 16  # requests decoded together; 1 = one at a time
    max_queued: int = 64  # requests waiting for a place in the batch; more get 503 with Retry-After
    retry_after_s: int = 1  # what a 503 tells the client to wait
    header_timeout_s: float = 10.0  # a connection whose request headers take longer is closed (slow loris)
    body_timeout_s: float = 10.0  # a body that takes longer to arrive gets 408

    def __post_init__(self) -> None:
        for name in ("max_tokens_cap", "default_max_tokens", "max_body_bytes", "max_batch_size", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServingLimits.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queued < 0:
            raise ValueError(f"ServingLimits.max_queued must be >= 0, got {self.max_queued}")
        for name in ("generation_timeout_s", "header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServingLimits.{name} must be > 0, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("ServingLimits.default_max_tokens must not exceed max_tokens_cap")


class ClientGone(Exception):
    """The client closed the connection before its answer was complete (logged as one line, counted as 499)."""


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """What the service serves: the model, its tokenizer, and the name clients pass as ``model``."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    parent: str | None = None  # with an adapter: the base's name (``/v1/models`` says it, as vLLM does)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))


def load_for_serving(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                     device: str | torch.device | None = None, int8: bool = False,
                     chat_template: str | None = None, model_id: str | None = None,
                     adapter_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load a release folder for serving, with clear errors. Introduced in ``10_deployment.ipynb``.

    The one place a model is loaded: ``int8`` serves :func:`helpers.deployment.quantize_int8`'s
    CPU copy; ``chat_template`` (a Jinja file, or the template itself) replaces the release's own,
    as vLLM's ``--chat-template`` does; ``model_id`` defaults to the folder's name. ``adapter_dir``
    (11): a LoRA adapter merged into the model at load (:func:`helpers.lora.merge_adapter`), so it
    is served at the base's speed; the adapter's folder then names the model and gives the tokenizer.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json); pass a release written by "
                                "helpers.deployment.export_release")
    adapter = check_adapter_folder(adapter_dir) if adapter_dir is not None else None
    if tokenizer_dir:
        tokenizer_dir = Path(tokenizer_dir)
    else:
        tokenizer_dir = adapter if adapter is not None and _has_tokenizer(adapter) else model_dir
    if not _has_tokenizer(tokenizer_dir):
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir}; export the model with export_release (it "
                                "saves the tokenizer) or pass --tokenizer DIR")
    if int8 and device is not None and torch.device(device).type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU only; drop the device or int8")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template is not None:
        tokenizer.chat_template = _read_template(chat_template)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        model = merge_adapter(model, adapter)
    model = quantize_int8(model) if int8 else model.to(pick_device(str(device) if device is not None else None))
    if adapter is None:
        return LoadedModel(model, tokenizer, model_id or model_dir.resolve().name)
    return LoadedModel(model, tokenizer, model_id or adapter.resolve().name, parent=model_dir.resolve().name)


def _read_template(value: str) -> str:
    path = Path(value)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if "{" not in value:
        raise FileNotFoundError(f"chat template {value!r} is neither a file nor a Jinja template; pass a .jinja file")
    return value


# --------------------------------------------------------------------------- the service


class _Mailbox:
    """From the engine's thread to the event loop: deliveries wait here until the engine's forward pass
    is done, then go over in one wake-up of the loop. Waking the loop once per token (8 rows, 8 wake-ups
    a step) made the engine's thread wait for the loop's thread after each one, for the GIL."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, tuple[str, object], EngineRequest]] = []

    def post(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue, item: tuple[str, object],
             job: EngineRequest) -> None:
        with self._lock:
            self._items.append((loop, events, item, job))

    def hand_over(self) -> None:
        """The engine's ``after_pass``: everything posted since the last call, one callback per event loop."""
        with self._lock:
            items, self._items = self._items, []
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, events, item, job in items:
            by_loop.setdefault(loop, []).append((events, item, job))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                for _, _, job in batch:
                    job.cancel()


def _put_all(batch: list[tuple[asyncio.Queue, tuple[str, object], EngineRequest]]) -> None:
    for events, item, _ in batch:
        events.put_nowait(item)


class _Service:
    """What the routes share: the engine, the limits, the key, the metrics."""

    def __init__(self, loaded: LoadedModel, limits: ServingLimits, api_key: str | None):
        self.model_id, self.tokenizer, self.limits, self.api_key = loaded.model_id, loaded.tokenizer, limits, api_key
        self.parent = loaded.parent
        self.metrics: ServingMetrics = new_metrics(loaded.model_id)
        self.mailbox = _Mailbox()
        self.engine = Engine(loaded.model, loaded.tokenizer, limits.max_batch_size, limits.max_queued, self.metrics,
                             after_pass=self.mailbox.hand_over)
        self.created = int(time.time())

    def check_model(self, name: str) -> None:
        if name != self.model_id:
            raise APIError(404, f"The model `{name}` does not exist on this server.", param="model",
                           code="model_not_found")

    def chat_prompt(self, request: ChatCompletionRequest) -> str:
        if not self.tokenizer.chat_template:
            raise APIError(400, "this model has no chat template, so messages cannot become a prompt; export it with "
                                "helpers.deployment.export_release (which stores one) or start the server with "
                                "--chat-template FILE", param="messages", code="no_chat_template")
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except jinja2.TemplateError as error:
            raise APIError(400, f"the model's chat template refused these messages: {error}", param="messages",
                           code="invalid_value") from None

    def params(self, request: CompletionRequest | ChatCompletionRequest, prompt_tokens: int) -> SamplingParams:
        asked = getattr(request, "max_completion_tokens", None) or request.max_tokens
        max_tokens = self.limits.default_max_tokens if asked is None else asked
        if max_tokens > self.limits.max_tokens_cap:
            raise APIError(400, f"max_tokens is {max_tokens}, more than this server's limit of "
                                f"{self.limits.max_tokens_cap}", param="max_tokens", code="invalid_value")
        context = self.engine.context
        if prompt_tokens + max_tokens > context:
            raise APIError(400, f"This model's maximum context length is {context} tokens, however you requested "
                                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in your prompt; {max_tokens} "
                                "for the completion). Please reduce your prompt or completion length.",
                           param="prompt", code="context_length_exceeded")
        return SamplingParams(max_tokens, 1.0 if request.temperature is None else request.temperature,
                              1.0 if request.top_p is None else request.top_p, request.seed, tuple(request.stop))

    async def answer(self, http: Request, request: CompletionRequest | ChatCompletionRequest, prompt: str,
                     shape: Shape) -> Response:
        """Queue the request; then stream its text as server-sent events, or wait for the whole of it."""
        prompt_ids = self.engine.encode(prompt)
        params = self.params(request, len(prompt_ids))
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def deliver(kind: str, item: object) -> None:  # called from the engine's thread
            self.mailbox.post(loop, events, (kind, item), job)

        job = EngineRequest(prompt_ids, params, self.limits.generation_timeout_s, deliver, stream=request.stream)
        try:
            self.engine.submit(job)
        except QueueFull:
            raise APIError(503, f"the server is busy ({self.engine.waiting} requests waiting); retry in "
                                f"{self.limits.retry_after_s} s", code="server_busy", type="server_error",
                           headers={"Retry-After": str(self.limits.retry_after_s)}) from None
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return EventSourceResponse(self.stream(http, job, events, shape, include_usage),
                                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await _wait_unless_gone(http, job, events)
        self.raise_for(result)
        body = shape.answer(result.text, result.finish_reason, schema.usage(result.prompt_tokens,
                                                                            result.completion_tokens))
        return JSONResponse(body)

    def raise_for(self, result: Result) -> None:
        if result.finish_reason == "timeout":
            raise APIError(504, "generation did not finish within this server's limit of "
                                f"{self.limits.generation_timeout_s:g} s (time in the queue included); ask for fewer "
                                "max_tokens or retry later", code="generation_timeout", type="server_error")
        if result.finish_reason == "shutdown":
            raise APIError(503, "the server is shutting down; retry in a moment", code="shutting_down",
                           type="server_error", headers={"Retry-After": str(self.limits.retry_after_s)})
        if result.finish_reason not in ("stop", "length"):
            raise APIError(500, "generation failed on the server (the error is in its log); retry, and report it if "
                                "it happens again", code="generation_failed", type="server_error")

    async def stream(self, http: Request, job: EngineRequest, events: asyncio.Queue, shape: Shape,
                     include_usage: bool) -> AsyncIterator[bytes]:
        """Server-sent events: a chunk per text piece, a last chunk with the finish reason, then ``[DONE]``.

        Events that piled up while the event loop was busy go out in one write (each still its own event).
        """
        finished = False
        try:
            if shape.chat:
                yield _event(shape.chunk("", role=True))
            while not finished:
                pending, out = [await events.get()], []
                while not events.empty():
                    pending.append(events.get_nowait())
                for kind, item in pending:
                    if kind == "text":
                        out.append(_event(shape.chunk(item)))
                    else:
                        out += self._last_events(http, item, shape, include_usage)
                        finished = True
                yield b"".join(out)
        finally:
            if not finished:
                job.cancel()
                _log_gone(http, f"stopped {shape.id} after {job.completion_tokens} tokens of its stream")

    def _last_events(self, http: Request, result: Result, shape: Shape, include_usage: bool) -> list[bytes]:
        """The end of a stream: the finish reason (and usage) or the error, then ``[DONE]``."""
        try:
            self.raise_for(result)
        except APIError as error:
            self.metrics.errors.labels(_endpoint(http.url.path), error.type).inc()
            out = [_event(error.body())]
        else:
            out = [_event(shape.chunk(None if shape.chat else "", result.finish_reason))]
            if include_usage:
                out.append(_event(shape.usage_chunk(schema.usage(result.prompt_tokens, result.completion_tokens))))
        return [*out, format_sse_event(data_str="[DONE]")]


def _event(data: dict) -> bytes:
    return format_sse_event(data_str=json.dumps(data))


def _log_gone(http: Request, what: str) -> None:
    client = f"{http.client.host}:{http.client.port}" if http.client else "a client"
    logger.info("%s disconnected from %s %s; %s", client, http.method, http.url.path, what)


async def _wait_unless_gone(http: Request, job: EngineRequest, events: asyncio.Queue) -> Result:
    """The request's result, unless its client disconnects first: then the engine drops its row."""

    async def disconnected() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    gone, done = asyncio.ensure_future(disconnected()), asyncio.ensure_future(events.get())
    try:
        await asyncio.wait({gone, done}, return_when=asyncio.FIRST_COMPLETED)
        if done.done():
            return done.result()[1]
        job.cancel()
        _log_gone(http, f"stopped its generation after {job.completion_tokens} tokens")
        raise ClientGone()
    finally:
        gone.cancel()
        done.cancel()


async def _read_body(http: Request, limits: ServingLimits) -> bytes:
    """The body: 413 as soon as it is known to exceed the cap, 408 when it is too slow to arrive."""
    cap = limits.max_body_bytes
    too_big = APIError(413, f"request body is larger than this server's limit of {cap:,} bytes; send a shorter "
                            "prompt", code="request_too_large")
    declared = http.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, f"Content-Length {declared!r} is not a number", code="invalid_header")
        if int(declared) > cap:
            raise too_big

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in http.stream():
            size += len(chunk)
            if size > cap:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s; send it in one go",
                       code="request_timeout", headers={"Connection": "close"}) from None
    except ClientDisconnect:
        _log_gone(http, "it left while sending the request body")
        raise ClientGone() from None


def _endpoint(path: str) -> str:
    if path in ENDPOINTS:
        return path
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


class _Guard:
    """Pure ASGI middleware: times every request to its last byte, counts it by status, and turns an
    unexpected exception into a JSON 500 (the service keeps serving) and a gone client into one log line."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, endpoint = time.perf_counter(), None, _endpoint(scope["path"])

        async def send_and_watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except (ClientGone, ClientDisconnect):
            status = 499  # nginx's "client closed request": nobody is left to answer
        except Exception:
            logger.exception("unexpected error answering %s %s", scope.get("method"), scope["path"])
            if status is None:
                error = APIError(500, "the server failed on this request (the error is in its log); retry, and "
                                      "report it if it happens again", code="internal_error", type="server_error")
                self.metrics.errors.labels(endpoint, error.type).inc()
                await JSONResponse(error.body(), status_code=500)(scope, receive, send_and_watch)
        finally:
            self.metrics.requests.labels(endpoint, str(status or 500)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


# --------------------------------------------------------------------------- the app


def create_app(
    model_dir: str | os.PathLike,
    api_key: str | None = None,
    limits: ServingLimits = ServingLimits(),  # frozen: safe to share as a default
    model_id: str | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    int8: bool = False,
    chat_template: str | None = None,
    adapter_dir: str | os.PathLike | None = None,
) -> FastAPI:
    """Build the FastAPI app serving the model in ``model_dir``. Introduced in ``10_deployment.ipynb``.

    ``api_key``: when set, every endpoint but ``/health`` needs ``Authorization: Bearer KEY``.
    ``model_id`` (default: the folder's name) is the name clients pass as ``model``. The
    interactive docs (``/docs``, ``/redoc``, ``/openapi.json``) are off: they would describe the
    API to anyone, key or not. ``adapter_dir``: a LoRA adapter merged into the model at load
    (11); ``/v1/models`` then lists the adapter, with its base as ``parent`` (as vLLM lists LoRA modules).
    """
    loaded = load_for_serving(model_dir, tokenizer_dir, device, int8, chat_template, model_id, adapter_dir)
    service = _Service(loaded, limits, api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.engine.close()  # stop what is running, let the engine's thread go, free GPU memory

    app = FastAPI(title=f"course completions: {service.model_id}", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service, app.state.engine, app.state.metrics = service, service.engine, service.metrics
    app.add_middleware(_Guard, metrics=service.metrics)
    _add_error_handlers(app, service)
    _add_routes(app, service)
    return app


def _add_error_handlers(app: FastAPI, service: _Service) -> None:
    def error_response(request: Request, error: APIError) -> JSONResponse:
        service.metrics.errors.labels(_endpoint(request.url.path), error.type).inc()
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else error.headers
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = schema.validation_message(error)
        return error_response(request, APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}. Please check the URL."
        elif error.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = str(error.detail)
        return error_response(request, APIError(error.status_code, message, code=None))


def _add_routes(app: FastAPI, service: _Service) -> None:
    def require_key(request: Request) -> None:
        if service.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "You didn't provide an API key. Send it in an Authorization header using Bearer "
                                "auth (i.e. Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), service.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    authorized = [Depends(require_key)]

    def card() -> dict:
        card = {"id": service.model_id, "object": "model", "created": service.created, "owned_by": "course"}
        return card if service.parent is None else {**card, "parent": service.parent}

    @app.get("/health")
    async def health() -> dict:
        engine = service.engine
        return {"status": "ok", "model": service.model_id, "queued": engine.waiting, "running": engine.running}

    @app.get("/metrics", dependencies=authorized)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=authorized)
    async def list_models() -> dict:
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{name:path}", dependencies=authorized)
    async def retrieve_model(name: str) -> dict:
        service.check_model(name)
        return card()

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(http: Request) -> Response:
        request = schema.validate(CompletionRequest, schema.parse_json(await _read_body(http, service.limits)))
        service.check_model(request.model)
        return await service.answer(http, request, request.prompt, Shape(False, service.model_id))

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(http: Request) -> Response:
        request = schema.validate(ChatCompletionRequest, schema.parse_json(await _read_body(http, service.limits)))
        service.check_model(request.model)
        return await service.answer(http, request, service.chat_prompt(request), Shape(True, service.model_id))
