"""What goes over the wire: OpenAI's request and response shapes, and errors that name the problem.

Introduced in ``10_deployment.ipynb``. The requests are the subset of OpenAI's
``/v1/completions`` and ``/v1/chat/completions`` this service understands; anything else is
a 400 that says which field is wrong and why, never a 500.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP_SEQUENCES = 4  # as in OpenAI's API
MAX_LOGPROBS = 5  # completions' logprobs, as in OpenAI's API
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs, as in OpenAI's API


class APIError(Exception):
    """An error the client gets in OpenAI's shape, with an HTTP status (and headers, e.g. ``Retry-After``)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------- requests


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, strict=True)


class _Sampling(BaseModel):
    """The fields both endpoints share: which model, how much, how many, how random, when to stop."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(strict=True)]
    max_tokens: Annotated[int | None, Field(strict=True, ge=1)] = None
    temperature: Annotated[float | None, Field(strict=True, ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(strict=True, gt=0.0, le=1.0)] = None
    stop: Any = Field(None, validate_default=True)  # a string or a list of up to 4 strings; checked below
    seed: Annotated[int | None, Field(strict=True, ge=0, le=2**63 - 1)] = None
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(strict=True, ge=1)] = 1  # independent samples; with a seed, sample i uses seed + i
    user: Annotated[str | None, Field(strict=True)] = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"stop must be a string or a list of strings, got {json_type(value)}")
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(value)}")
        if any(v == "" for v in value):
            raise ValueError("stop sequences must not be empty strings")
        return value


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: prompts to continue, as text or token ids; one choice per prompt (times ``n``)."""

    prompt: Any  # a string, a list of strings, a list of token ids, or a list of those; checked below
    echo: Annotated[bool, Field(strict=True)] = False  # the prompt in front of the text (and of the logprobs)
    logprobs: Annotated[int | None, Field(strict=True, ge=0, le=MAX_LOGPROBS)] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value: Any) -> list[str | list[int]]:
        """A list of prompts, each a non-empty string or a non-empty list of token ids."""
        if isinstance(value, str) or _is_ids(value):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) or _is_ids(v) for v in value):
            raise ValueError(f"prompt must be a string, a list of strings, a list of token ids or a list of "
                             f"token-id lists, got {json_type(value)}")
        if any(v == "" for v in value):
            raise ValueError("prompt must not be empty")
        return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Annotated[str, Field(strict=True)]


class ChatMessage(BaseModel):
    """One turn of a conversation; ``content`` may be a string or a list of text parts."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(strict=True)] | list[TextPart]
    name: Annotated[str | None, Field(strict=True)] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: messages, turned into a prompt by the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int | None, Field(strict=True, ge=1)] = None  # OpenAI's newer name
    logprobs: Annotated[bool, Field(strict=True)] = False
    top_logprobs: Annotated[int | None, Field(strict=True, ge=0, le=MAX_TOP_LOGPROBS)] = None


class ClassifyRequest(BaseModel):
    """``POST /v1/classify`` (vLLM's shape): one text or a list of texts to classify."""

    model_config = ConfigDict(extra="forbid")
    model: Annotated[str, Field(strict=True)]
    input: Annotated[str, Field(strict=True)] | Annotated[list[Annotated[str, Field(strict=True)]],
                                                          Field(min_length=1)]
    user: Annotated[str | None, Field(strict=True)] = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if any(not text for text in texts):
            raise APIError(400, "input must not hold empty strings", param="input", code="invalid_value")
        return texts


# --------------------------------------------------------------------------- parsing, with clear errors


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
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
    except json.JSONDecodeError as error:  # str(error): "Expecting value: line 1 column 5 (char 4)"
        raise APIError(400, f"request body is not valid JSON: {error}", code="invalid_json") from None
    except (ValueError, RecursionError) as error:
        raise APIError(400, f"request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {json_type(data)}", code="invalid_json")
    _check_encodable(data, [])
    return data


def _check_encodable(value: Any, where: list[str]) -> None:
    """JSON may spell a lone UTF-16 surrogate (``"\\ud800"``); no UTF-8 text, and no tokenizer, can hold one."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            field = ".".join(where) or "request"
            raise APIError(400, f"{field} holds a lone UTF-16 surrogate ({value[error.start]!a} at character "
                                f"{error.start}), which is not text; send valid Unicode", param=where[0] if where
                           else None, code="invalid_encoding") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_encodable(key, where)
            _check_encodable(item, [*where, str(key)])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_encodable(item, [*where, str(index)])


def validation_message(error: ValidationError) -> tuple[str, str | None]:
    """The first problem in words (every unsupported option, by name), and the name of the field it concerns."""
    extra = [".".join(map(str, e["loc"])) for e in error.errors() if e.get("type") == "extra_forbidden"]
    if extra:
        plural = "s" if len(extra) > 1 else ""
        return f"Unrecognized request argument{plural} supplied: {', '.join(extra)} (not supported here)", extra[0]
    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    where = ".".join(loc) or "request"
    kind, message = first.get("type", ""), str(first.get("msg", "invalid value"))
    if kind == "missing":
        return f"you must provide a {where} parameter", param
    if kind == "value_error":
        return message.removeprefix("Value error, "), param
    got = first.get("input")
    shown = json.dumps(got)[:60] if isinstance(got, (str, int, float, bool, type(None))) else json_type(got)
    return f"{where}: {message} (got {shown})", param


def validate(model: type[BaseModel], data: dict) -> Any:
    """``data`` as a request of type ``model``, or a 400 naming the first wrong field."""
    try:
        request = model.model_validate(data)
    except ValidationError as error:
        message, param = validation_message(error)
        raise APIError(400, message, param=param, code="invalid_value") from None
    if not isinstance(request, _Sampling):
        return request
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options",
                       code="invalid_value")
    asked = [name for name in ("logprobs", "echo") if getattr(request, name, None) not in (None, False)]
    if request.stream and asked:
        raise APIError(400, f"{' and '.join(asked)} with stream: true is not supported here; ask without stream",
                       param=asked[0], code="unsupported_value")
    if getattr(request, "top_logprobs", None) is not None and not request.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    return request


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Shape:
    """How one endpoint wraps its choices: whole answers, stream chunks and the usage chunk share id and time."""

    def __init__(self, chat: bool, model_id: str):
        self.chat, self.model_id = chat, model_id
        self.id, self.created = new_id("chatcmpl" if chat else "cmpl"), int(time.time())

    def _wrap(self, obj: str, choices: list, usage_: dict | None = None) -> dict:
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model_id, "choices": choices}
        if usage_ is not None:
            body["usage"] = usage_
        return body

    def choice(self, index: int, text: str, finish_reason: str, logprobs: dict | None = None) -> dict:
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish_reason}
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    def answer(self, choices: list[dict], usage_: dict) -> dict:
        return self._wrap("chat.completion" if self.chat else "text_completion", choices, usage_)

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = ({"role": "assistant"} if role else {}) | ({} if text is None else {"content": text})
            return self._wrap("chat.completion.chunk", [{"index": index, "delta": delta, "logprobs": None,
                                                         "finish_reason": finish_reason}])
        return self._wrap("text_completion", [{"text": text or "", "index": index, "logprobs": None,
                                               "finish_reason": finish_reason}])

    def usage_chunk(self, usage_: dict) -> dict:
        return self._wrap("chat.completion.chunk" if self.chat else "text_completion", [], usage_)


def completion_logprobs(tokens: list[tuple[str, float | None, dict[str, float] | None]]) -> dict:
    """``/v1/completions``' logprobs object from (token text, log-probability, top alternatives) per token."""
    offsets, at = [], 0
    for text, _, _ in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": [t for t, _, _ in tokens], "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [top for _, _, top in tokens], "text_offset": offsets}


def chat_logprobs(tokens: list[tuple[str, float, list[tuple[str, float]]]]) -> dict:
    """``/v1/chat/completions``' logprobs object from (token text, log-probability, top alternatives) per token."""

    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(text, lp), "top_logprobs": [entry(t, v) for t, v in top]} for text, lp, top in tokens],
            "refusal": None}
