"""An OpenAI-compatible completion service for a released model, with limits, auth and metrics.

Introduced in ``07_deployment.ipynb``. Run it with::

    python -m helpers.serving --model artifacts/models/release [--host 127.0.0.1] [--port 8000] [--api-key KEY]

(the key can also come from ``COURSE_API_KEY``), then talk to it with the official client::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")
    client.completions.create(model="release", prompt="To be", max_tokens=20)

Endpoints: ``POST /v1/completions`` (streaming with ``"stream": true``), ``GET /v1/models``,
``GET /health`` (never needs the key) and ``GET /metrics`` (Prometheus text format).

How it stays up:

* **Limits** (:class:`ServingLimits`): the body size is checked before parsing (413);
  ``max_tokens`` has a cap; prompt + completion must fit the model's context; a generation
  that runs past its time budget is stopped (a ``StoppingCriteria``) and answered 504;
  at most ``max_queued`` requests wait, the next ones get 503.
* **Errors**: every client mistake is a 4xx in OpenAI's shape
  ``{"error": {"message", "type", "param", "code"}}`` with a message naming the problem;
  the service keeps serving afterwards.
* **One model, one thread**: requests are accepted concurrently by the event loop and
  queued for a single worker thread that drives the model, so two generations never race
  on the weights or on the random generator. A ``seed`` makes sampling repeatable;
  ``temperature`` 0 means greedy.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hmac
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("helpers.serving")

API_KEY_ENV = "COURSE_API_KEY"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENDPOINTS = ("/v1/completions", "/v1/models", "/health", "/metrics")
MAX_STOP_SEQUENCES = 4  # as in OpenAI's API


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of the service. Introduced in ``07_deployment.ipynb``.

    The prompt may use at most the model's context (``config.n_positions``) minus the
    request's ``max_tokens``.
    """

    max_tokens_cap: int = 256  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16  # OpenAI's default for /v1/completions
    max_body_bytes: int = 64 * 1024  # checked before the body is parsed
    generation_timeout_s: float = 30.0  # a generation still running then is stopped: 504
    max_queued: int = 64  # requests waiting for (or holding) the model; more get 503

    def __post_init__(self) -> None:
        for name in ("max_tokens_cap", "default_max_tokens", "max_body_bytes", "max_queued"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServingLimits.{name} must be >= 1, got {getattr(self, name)}")
        if not self.generation_timeout_s > 0:
            raise ValueError(f"ServingLimits.generation_timeout_s must be > 0, got {self.generation_timeout_s}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("ServingLimits.default_max_tokens must not exceed max_tokens_cap")


class APIError(Exception):
    """An error the client gets in OpenAI's shape, with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------- request schema


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, strict=True)


class CompletionRequest(BaseModel):
    """The subset of OpenAI's ``/v1/completions`` request this service understands."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(strict=True)]
    prompt: Any  # a string, or a list holding one string; checked below
    max_tokens: Annotated[int | None, Field(strict=True, ge=1)] = None
    temperature: Annotated[float | None, Field(strict=True, ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(strict=True, gt=0.0, le=1.0)] = None
    stop: Any = Field(None, validate_default=True)  # a string or a list of up to 4 strings; checked below
    seed: Annotated[int | None, Field(strict=True, ge=0, le=2**63 - 1)] = None
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    n: Annotated[int | None, Field(strict=True)] = None
    user: Annotated[str | None, Field(strict=True)] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_string(cls, value: Any) -> str:
        if isinstance(value, list):
            if len(value) != 1 or not isinstance(value[0], str):
                raise ValueError("prompt must be a string or a list of exactly one string (no batches, no token ids)")
            value = value[0]
        if not isinstance(value, str):
            raise ValueError(f"prompt must be a string, got {_json_type(value)}")
        if not value:
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"stop must be a string or a list of strings, got {_json_type(value)}")
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(value)}")
        if any(v == "" for v in value):
            raise ValueError("stop sequences must not be empty strings")
        return value

    @field_validator("n")
    @classmethod
    def _only_one(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError(f"n must be 1 (this service returns one completion per request), got {value}")
        return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _validation_message(error: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """The first problem in words, and the name of the field it concerns."""
    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    where = ".".join(loc) or "request"
    kind, message = first.get("type", ""), str(first.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {where}", param
    if kind == "missing":
        return f"you must provide a {where} parameter", param
    if kind == "value_error":
        return message.removeprefix("Value error, "), param
    got = first.get("input")
    shown = json.dumps(got)[:60] if isinstance(got, (str, int, float, bool, type(None))) else _json_type(got)
    return f"{where}: {message} (got {shown})", param


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Counters and a latency histogram, written out in Prometheus' text format by hand."""

    def __init__(self, model_id: str):
        self.model_id = model_id
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.bucket_counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.queue_depth = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[endpoint][i] += 1
            self.latency_sum[endpoint] += seconds
            self.latency_count[endpoint] += 1

    def error(self, endpoint: str, error_type: str) -> None:
        with self.lock:
            self.errors[(endpoint, error_type)] += 1

    def tokens(self, prompt: int, generated: int) -> None:
        with self.lock:
            self.prompt_tokens += prompt
            self.generated_tokens += generated

    def render(self) -> str:
        with self.lock:
            out = [
                "# HELP course_requests_total HTTP requests answered, by endpoint and status code.",
                "# TYPE course_requests_total counter",
            ]
            out += [f'course_requests_total{{endpoint="{_esc(e)}",status="{s}"}} {n}'
                    for (e, s), n in sorted(self.requests.items())]
            out += ["# HELP course_errors_total Error responses, by endpoint and OpenAI error type.",
                    "# TYPE course_errors_total counter"]
            out += [f'course_errors_total{{endpoint="{_esc(e)}",type="{_esc(t)}"}} {n}'
                    for (e, t), n in sorted(self.errors.items())]
            out += ["# HELP course_request_duration_seconds Time from request to the last byte of the answer.",
                    "# TYPE course_request_duration_seconds histogram"]
            for endpoint in sorted(self.latency_count):
                label = f'endpoint="{_esc(endpoint)}"'
                for bound, count in zip(LATENCY_BUCKETS, self.bucket_counts[endpoint], strict=True):
                    out.append(f'course_request_duration_seconds_bucket{{{label},le="{bound:g}"}} {count}')
                out.append(f'course_request_duration_seconds_bucket{{{label},le="+Inf"}} {self.latency_count[endpoint]}')
                out.append(f"course_request_duration_seconds_sum{{{label}}} {self.latency_sum[endpoint]:.6f}")
                out.append(f"course_request_duration_seconds_count{{{label}}} {self.latency_count[endpoint]}")
            out += [
                "# HELP course_prompt_tokens_total Prompt tokens of completed generations.",
                "# TYPE course_prompt_tokens_total counter",
                f"course_prompt_tokens_total {self.prompt_tokens}",
                "# HELP course_generated_tokens_total Tokens generated.",
                "# TYPE course_generated_tokens_total counter",
                f"course_generated_tokens_total {self.generated_tokens}",
                "# HELP course_queue_depth Completion requests waiting for or holding the model.",
                "# TYPE course_queue_depth gauge",
                f"course_queue_depth {self.queue_depth}",
                "# HELP course_model_info The model this process serves.",
                "# TYPE course_model_info gauge",
                f'course_model_info{{model="{_esc(self.model_id)}"}} 1',
            ]
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _endpoint_label(path: str) -> str:
    if path in ENDPOINTS:
        return path
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


class _MetricsMiddleware:
    """Pure ASGI middleware: times every HTTP request to its last byte (streams included)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.metrics.observe(_endpoint_label(scope["path"]), status, time.perf_counter() - start)


# --------------------------------------------------------------------------- generation


@dataclass
class _Job:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    cancel: threading.Event
    on_text: Callable[[str], None] | None = None


@dataclass
class _Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    timed_out: bool


class _TextEmitter:
    """A ``generate`` streamer: turns new token ids into text pieces, cuts at stop sequences.

    Holds back a trailing half UTF-8 character (shown as U+FFFD until its bytes complete)
    and, with stop sequences, the last ``len(stop) - 1`` characters, which might be the start
    of one. ``text`` is the final completion; streaming it piece by piece gives the same text.
    """

    def __init__(self, tokenizer, lock: threading.Lock, stop: list[str], on_text: Callable[[str], None] | None):
        self.tokenizer, self.lock, self.stop, self.on_text = tokenizer, lock, stop, on_text
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.text, self.sent, self.stopped, self._prompt_seen = "", 0, False, False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        if not self.stopped:
            self.ids.extend(value.flatten().tolist())
            self._advance(final=False)

    def end(self) -> None:
        self._advance(final=True)

    def _advance(self, final: bool) -> None:
        if self.stopped:
            return
        with self.lock:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            text, final, self.stopped = text[: min(cuts)], True, True
        safe = len(text)
        if not final:
            safe -= self.holdback
            while safe > self.sent and text[safe - 1] == "\ufffd":
                safe -= 1
        if safe > self.sent:
            if self.on_text is not None:
                self.on_text(text[self.sent:safe])
            self.sent = safe
        self.text = text


class _Deadline:
    """A ``StoppingCriteria``: stop at the time limit, on cancel, or once a stop sequence appeared."""

    def __init__(self, seconds: float, cancel: threading.Event, emitter: _TextEmitter):
        self.deadline, self.cancel, self.emitter = time.monotonic() + seconds, cancel, emitter
        self.timed_out = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if time.monotonic() > self.deadline:
            self.timed_out = True
        stop = self.timed_out or self.cancel.is_set() or self.emitter.stopped
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _Engine:
    """The model, its tokenizer and the one worker thread allowed to use them."""

    def __init__(self, model, tokenizer, model_id: str, limits: ServingLimits, metrics: Metrics):
        self.model, self.tokenizer, self.model_id, self.limits, self.metrics = model, tokenizer, model_id, limits, metrics
        self.tokenizer_lock = threading.Lock()  # the event loop encodes, the worker decodes: one at a time
        self.context = int(model.config.n_positions)
        self.device = next(model.parameters()).device
        self.eos_id = tokenizer.eos_token_id
        self.lock = threading.Lock()
        self.pending = 0
        self.cancels: set[threading.Event] = set()
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, job: _Job) -> concurrent.futures.Future:
        with self.lock:
            if self.pending >= self.limits.max_queued:
                raise APIError(503, f"the server is busy ({self.pending} requests queued); retry in a moment",
                               code="server_busy", type="server_error")
            if self.executor is None:
                self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
            self.pending += 1
            self.metrics.queue_depth = self.pending
            self.cancels.add(job.cancel)
            future = self.executor.submit(self._generate, job)
        future.add_done_callback(lambda _: self._finished(job))
        return future

    def _finished(self, job: _Job) -> None:
        with self.lock:
            self.pending -= 1
            self.metrics.queue_depth = self.pending
            self.cancels.discard(job.cancel)

    @torch.inference_mode()
    def _generate(self, job: _Job) -> _Result:
        from transformers import GenerationConfig, StoppingCriteriaList

        emitter = _TextEmitter(self.tokenizer, self.tokenizer_lock, job.stop, job.on_text)
        deadline = _Deadline(self.limits.generation_timeout_s, job.cancel, emitter)
        greedy = job.temperature == 0
        config = GenerationConfig(
            max_new_tokens=job.max_tokens, do_sample=not greedy, eos_token_id=self.eos_id, pad_token_id=self.eos_id,
            bos_token_id=self.tokenizer.bos_token_id, **({} if greedy else {"temperature": job.temperature, "top_p": job.top_p, "top_k": 0}),
        )
        ids = torch.tensor([job.prompt_ids], device=self.device)
        if not greedy:  # under the one worker thread: nobody else touches the generator in between
            torch.manual_seed(job.seed if job.seed is not None else int.from_bytes(os.urandom(7), "little"))
        self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=emitter,
                            stopping_criteria=StoppingCriteriaList([deadline]))
        finish = "stop" if emitter.stopped or (emitter.ids and emitter.ids[-1] == self.eos_id) else "length"
        self.metrics.tokens(len(job.prompt_ids), len(emitter.ids))
        return _Result(emitter.text, len(job.prompt_ids), len(emitter.ids), finish, deadline.timed_out)

    def close(self) -> None:
        with self.lock:
            for cancel in self.cancels:
                cancel.set()
            executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the app


def load_for_serving(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                     device: str | torch.device | None = None, int8: bool = False):
    """Load ``(model, tokenizer)`` from a release folder for serving, with clear errors.

    Introduced in ``07_deployment.ipynb``. ``int8`` serves :func:`helpers.deployment.quantize_int8`'s
    CPU copy instead of the fp32 weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.runtime import pick_device

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a model folder (no config.json); pass a release written by "
            "helpers.deployment.export_release"
        )
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else model_dir
    if not any((tokenizer_dir / n).is_file() for n in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"no tokenizer files in {tokenizer_dir}; export the model with export_release (it saves the tokenizer) "
            "or pass --tokenizer DIR"
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if int8:
        from helpers.deployment import quantize_int8

        if device is not None and torch.device(device).type != "cpu":
            raise ValueError("int8 dynamic quantization runs on the CPU only; drop the device or int8")
        model = quantize_int8(model)
    else:
        model = model.to(pick_device(str(device) if device is not None else None))
    return model, tokenizer


def create_app(
    model_dir: str | os.PathLike,
    api_key: str | None = None,
    limits: ServingLimits = ServingLimits(),  # frozen: safe to share as a default
    model_id: str | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    int8: bool = False,
) -> FastAPI:
    """Build the FastAPI app serving the model in ``model_dir``. Introduced in ``07_deployment.ipynb``.

    ``api_key``: when set, every endpoint but ``/health`` needs ``Authorization: Bearer KEY``.
    ``model_id`` (default: the folder's name) is the name clients pass as ``model``.
    """
    model, tokenizer = load_for_serving(model_dir, tokenizer_dir, device, int8)
    model_id = model_id or Path(model_dir).resolve().name
    metrics = Metrics(model_id)
    engine = _Engine(model, tokenizer, model_id, limits, metrics)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.close()  # stop what is running, let the worker thread go, free GPU memory

    app = FastAPI(title=f"course completions: {model_id}", lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.limits = engine, metrics, limits
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    def error_response(request: Request, error: APIError) -> JSONResponse:
        metrics.error(_endpoint_label(request.url.path), error.type)
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
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

    authorized = [Depends(require_key)]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_id, "queued": engine.pending}

    @app.get("/metrics", dependencies=authorized, response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "course"}

    @app.get("/v1/models", dependencies=authorized)
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=authorized)
    async def retrieve_model(name: str) -> dict:
        if name != model_id:
            raise _model_not_found(name)
        return model_card()

    @app.post("/v1/completions", dependencies=authorized, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": CompletionRequest.model_json_schema()}}}})
    async def completions(request: Request):
        req = _validate(_parse_json(await _read_body(request, limits.max_body_bytes)))
        job = _make_job(req, engine, limits)
        if req.stream:
            return _stream(req, job, engine)
        result = await asyncio.wrap_future(engine.submit(job))
        if result.timed_out:
            raise _timeout(limits)
        return _completion(model_id, result.text, result.finish_reason, result)

    return app


async def _read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``cap`` bytes (header or stream)."""
    too_big = APIError(413, f"request body is larger than this server's limit of {cap:,} bytes; send a shorter "
                            "prompt", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, f"Content-Length {declared!r} is not a number", code="invalid_header")
        if int(declared) > cap:
            raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes) -> dict:
    if not body.strip():
        raise APIError(400, "request body is empty; send a JSON object such as "
                            '{"model": "...", "prompt": "..."}', code="invalid_json")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise APIError(400, f"request body is not valid UTF-8 (byte {error.start}); send UTF-8 encoded JSON",
                       code="invalid_encoding") from None

    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as error:
        raise APIError(400, f"request body is not valid JSON: {error.msg} at line {error.lineno} column "
                            f"{error.colno}", code="invalid_json") from None
    except (ValueError, RecursionError) as error:
        raise APIError(400, f"request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {_json_type(data)}", code="invalid_json")
    return data


def _validate(data: dict) -> CompletionRequest:
    try:
        return CompletionRequest.model_validate(data)
    except ValidationError as error:
        message, param = _validation_message(error)
        raise APIError(400, message, param=param, code="invalid_value") from None


def _model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist on this server.", param="model", code="model_not_found")


def _timeout(limits: ServingLimits) -> APIError:
    return APIError(504, f"generation did not finish within this server's limit of {limits.generation_timeout_s:g} s; "
                         "ask for fewer max_tokens or retry later", code="generation_timeout", type="server_error")


def _make_job(req: CompletionRequest, engine: _Engine, limits: ServingLimits) -> _Job:
    if req.model != engine.model_id:
        raise _model_not_found(req.model)
    max_tokens = limits.default_max_tokens if req.max_tokens is None else req.max_tokens
    if max_tokens > limits.max_tokens_cap:
        raise APIError(400, f"max_tokens is {max_tokens}, more than this server's limit of {limits.max_tokens_cap}",
                       param="max_tokens", code="invalid_value")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options",
                       code="invalid_value")
    with engine.tokenizer_lock:
        prompt_ids = engine.tokenizer(req.prompt).input_ids
    if len(prompt_ids) + max_tokens > engine.context:
        raise APIError(
            400, f"This model's maximum context length is {engine.context} tokens, however you requested "
                 f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in your prompt; {max_tokens} for the "
                 "completion). Please reduce your prompt or completion length.",
            param="prompt", code="context_length_exceeded")
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    return _Job(prompt_ids, max_tokens, temperature, top_p, req.stop, req.seed, threading.Event())


def _usage(result: _Result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _completion(model_id: str, text: str, finish_reason: str | None, result: _Result | None,
                completion_id: str | None = None, created: int | None = None) -> dict:
    body = {
        "id": completion_id or f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model_id,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
    }
    if result is not None:
        body["usage"] = _usage(result)
    return body


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _stream(req: CompletionRequest, job: _Job, engine: _Engine) -> StreamingResponse:
    """Server-sent events: one chunk per text piece as tokens come out, a last chunk, then ``[DONE]``."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def deliver(item) -> None:
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
            job.cancel.set()

    job.on_text = lambda text: deliver(("text", text))
    future = engine.submit(job)  # raises 503 here, before the stream starts, when the queue is full
    future.add_done_callback(lambda f: deliver(("done", f)))
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        try:
            while True:
                kind, payload = await pieces.get()
                if kind == "text":
                    yield _sse(_completion(engine.model_id, payload, None, None, completion_id, created))
                    continue
                if payload.exception() is not None:
                    logger.error("generation failed", exc_info=payload.exception())
                    engine.metrics.error("/v1/completions", "server_error")
                    yield _sse(APIError(500, "generation failed on the server", type="server_error").body())
                elif payload.result().timed_out:
                    engine.metrics.error("/v1/completions", "server_error")
                    yield _sse(_timeout(engine.limits).body())
                else:
                    result = payload.result()
                    yield _sse(_completion(engine.model_id, "", result.finish_reason, None, completion_id, created))
                    if include_usage:
                        yield _sse({"id": completion_id, "object": "text_completion", "created": created,
                                    "model": engine.model_id, "choices": [], "usage": _usage(result)})
                yield _sse("[DONE]")
                return
        finally:
            job.cancel.set()  # the client went away or we are done: stop generating for nobody

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --------------------------------------------------------------------------- command line


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class BackgroundServer:
    """A ``python -m helpers.serving`` process started by :func:`start_background`.

    Introduced in ``07_deployment.ipynb``; the live test and ``bench/bench_serving.py`` use it too.
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

    The key travels in the ``COURSE_API_KEY`` environment variable, not on the command line
    (where ``ps`` would show it). The process is stopped at interpreter exit at the latest,
    so a notebook never leaves a server behind. A server that dies or does not answer in
    ``startup_timeout`` seconds is a ``RuntimeError`` carrying its log.
    """
    import atexit

    import httpx

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


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.serving --model DIR``: serve a release with uvicorn until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m helpers.serving", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="release folder (written by export_release)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, if set)")
    parser.add_argument("--model-id", help="the name clients pass as model (default: the folder's name)")
    parser.add_argument("--tokenizer", help="tokenizer folder, when the model folder has none")
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--int8", action="store_true", help="serve an int8 dynamic-quantized copy (CPU)")
    parser.add_argument("--max-tokens-cap", type=int, default=ServingLimits.max_tokens_cap)
    parser.add_argument("--timeout", type=float, default=ServingLimits.generation_timeout_s,
                        help="seconds a generation may run")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    import uvicorn
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    transformers_logging.disable_progress_bar()  # a server log is no place for progress bars
    if not _is_loopback(args.host) and not args.api_key:
        logger.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                       "(set --api-key or %s)", args.host, API_KEY_ENV)
    try:
        limits = ServingLimits(max_tokens_cap=args.max_tokens_cap, generation_timeout_s=args.timeout,
                               default_max_tokens=min(ServingLimits.default_max_tokens, args.max_tokens_cap))
        app = create_app(args.model, api_key=args.api_key, limits=limits, model_id=args.model_id,
                         tokenizer_dir=args.tokenizer, device=args.device, int8=args.int8)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # uvicorn shuts down gracefully on SIGTERM/Ctrl-C (finishes open requests, runs the lifespan's
    # clean-up), then raises the signal again; these handlers turn that into a quiet exit code.
    signal.signal(signal.SIGTERM, _exit_with(0))
    signal.signal(signal.SIGINT, _exit_with(130))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=math.ceil(args.timeout))
    return 0


def _exit_with(code: int):
    def handler(signum, frame):
        raise SystemExit(code)

    return handler


if __name__ == "__main__":
    sys.exit(main())
