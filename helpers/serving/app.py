"""The HTTP side: FastAPI routes in OpenAI's shape in front of the batching engine (or a classifier).

Introduced in ``10_deployment.ipynb``. :func:`build_app` loads a release folder, builds the
engine for a causal LM (or the classifier for a sequence classifier) and hands it to
:func:`create_app`, which adds the routes. A request's way: route → :class:`Completions` →
``Engine.open`` → ``async for`` over its stream → JSON or server-sent events. Every client mistake
is a 4xx in OpenAI's error shape; anything unexpected is a JSON 500 and the service keeps serving;
a client that leaves stops its generation within one decoding step.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from helpers.serving import schema
from helpers.serving.classify import Classifier
from helpers.serving.completions import ClientGone, Completions, log_gone
from helpers.serving.engine import Engine
from helpers.serving.limits import DEFAULT_LIMITS, ServingLimits
from helpers.serving.loading import load_for_serving
from helpers.serving.metrics import ServingMetrics, new_metrics
from helpers.serving.page import chat_page
from helpers.serving.schema import APIError, ChatCompletionRequest, ClassifyRequest, CompletionRequest

logger = logging.getLogger("helpers.serving")

ENDPOINTS = ("/", "/v1/completions", "/v1/chat/completions", "/classify", "/v1/classify", "/v1/models", "/health",
             "/metrics")


def build_app(
    model_dir: str | os.PathLike,
    api_key: str | None = None,
    limits: ServingLimits = DEFAULT_LIMITS,
    model_id: str | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    int8: bool = False,
    chat_template: str | None = None,
    adapter_dir: str | os.PathLike | None = None,
):
    """Load the release in ``model_dir``, build its engine (or classifier), and the app around it.

    Introduced in ``10_deployment.ipynb``. ``model_id`` (default: the folder's name) is the name
    clients pass as ``model``; ``chat_template`` replaces the release's own (vLLM's
    ``--chat-template``); ``adapter_dir`` (11): a LoRA adapter merged into the model at load,
    listed by ``/v1/models`` with its base as ``parent`` (as vLLM lists LoRA modules).
    """
    loaded = load_for_serving(model_dir, tokenizer_dir, device, int8, chat_template, model_id, adapter_dir)
    kind = Classifier if loaded.classifier else Engine
    worker = kind(loaded.model, loaded.tokenizer, limits, new_metrics(loaded.model_id))
    return create_app(worker, loaded.model_id, api_key, loaded.parent)


def create_app(worker: Engine | Classifier, model_id: str, api_key: str | None = None,
               parent: str | None = None) -> FastAPI:
    """The FastAPI app serving an already built engine (or classifier). Introduced in ``10_deployment.ipynb``.

    An :class:`~helpers.serving.engine.Engine` answers ``/v1/completions``, ``/v1/chat/completions``
    and the chat page at ``/``; a :class:`~helpers.serving.classify.Classifier` answers
    ``/classify`` and ``/v1/classify``; each says so (404) on the other's routes. ``api_key``: when
    set, every endpoint but ``/health`` and the page needs ``Authorization: Bearer KEY``. The
    interactive docs (``/docs``, ``/redoc``, ``/openapi.json``) are off: they would describe the API to
    anyone, key or not. The app's lifespan closes the engine when the server stops.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if isinstance(worker, Engine):
            worker.close()  # stop what is running, let the engine's thread go, free GPU memory

    app = FastAPI(title=f"course completions: {model_id}", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.worker, app.state.metrics = worker, worker.metrics
    if isinstance(worker, Engine):
        app.state.engine = worker
    app.add_middleware(_Guard, metrics=worker.metrics)
    _add_error_handlers(app, worker.metrics)
    _add_routes(app, worker, model_id, api_key, parent)
    return app


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
        log_gone(http, "it left while sending the request body")
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


def _add_error_handlers(app: FastAPI, metrics: ServingMetrics) -> None:
    def error_response(request: Request, error: APIError) -> JSONResponse:
        metrics.errors.labels(_endpoint(request.url.path), error.type).inc()
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else error.headers
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}. Please check the URL."
        elif error.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = str(error.detail)
        return error_response(request, APIError(error.status_code, message, code=None))


def _require_key(api_key: str | None):
    def require_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "You didn't provide an API key. Send it in an Authorization header using Bearer "
                                "auth (i.e. Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    return [Depends(require_key)]


def _add_routes(app: FastAPI, worker: Engine | Classifier, model_id: str, api_key: str | None,
                parent: str | None) -> None:
    """Health, metrics and models for either kind; then the routes of the worker's kind (and 404s for the other's)."""
    authorized, created = _require_key(api_key), int(time.time())

    def card() -> dict:
        card = {"id": model_id, "object": "model", "created": created, "owned_by": "course"}
        return card if parent is None else {**card, "parent": parent}

    @app.get("/health")
    async def health() -> dict:
        running = {"queued": worker.waiting, "running": worker.running} if isinstance(worker, Engine) else {}
        return {"status": "ok", "model": model_id, **running}

    @app.get("/metrics", dependencies=authorized)
    async def metrics() -> Response:
        return Response(generate_latest(worker.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=authorized)
    async def list_models() -> dict:
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{name:path}", dependencies=authorized)
    async def retrieve_model(name: str) -> dict:
        _check_model(name, model_id)
        return card()

    _add_kind_routes(app, worker, model_id, authorized)


def _check_model(name: str, model_id: str) -> None:
    if name != model_id:
        raise APIError(404, f"The model `{name}` does not exist on this server.", param="model", code="model_not_found")


def _add_kind_routes(app: FastAPI, worker: Engine | Classifier, model_id: str, authorized: list) -> None:
    """The page, completions and chat for an engine; classify for a classifier; each kind's 404 says why."""
    completions = Completions(worker, model_id) if isinstance(worker, Engine) else None
    classifier = worker if isinstance(worker, Classifier) else None

    async def body(http: Request, kind: type, serves: str):
        if (kind is ClassifyRequest) != (classifier is not None):
            what = "a sequence classifier" if classifier is not None else "a causal language model"
            raise APIError(404, f"{http.url.path} is not served here: `{model_id}` is {what}, so this server "
                                f"answers {serves}", code="wrong_model_kind")
        request = schema.validate(kind, schema.parse_json(await _read_body(http, worker.limits)))
        _check_model(request.model, model_id)
        return request

    generates, classifies = "POST /v1/completions and /v1/chat/completions", "POST /v1/classify"

    @app.get("/")
    async def page(http: Request) -> HTMLResponse:
        if completions is None:
            raise APIError(404, f"the chat page needs a causal language model; `{model_id}` is a sequence "
                                f"classifier, so this server answers {classifies}", code="wrong_model_kind")
        html, policy = chat_page()
        return HTMLResponse(html, headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer"})

    @app.post("/v1/completions", dependencies=authorized)
    async def complete(http: Request) -> Response:
        request = await body(http, CompletionRequest, classifies)
        return await completions.answer(http, request, completions.completion_prompts(request))

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat(http: Request) -> Response:
        request = await body(http, ChatCompletionRequest, classifies)
        return await completions.answer(http, request, completions.chat_prompts(request))

    @app.post("/classify", dependencies=authorized)
    @app.post("/v1/classify", dependencies=authorized)
    async def classify(http: Request) -> dict:
        request = await body(http, ClassifyRequest, generates)
        data, tokens = await classifier.classify(request.texts())
        return {"id": schema.new_id("classify"), "object": "list", "created": int(time.time()), "model": model_id,
                "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
