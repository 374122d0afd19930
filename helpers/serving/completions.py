"""Completion and chat requests through the engine: OpenAI's options in, OpenAI's answers out.

Introduced in ``10_deployment.ipynb``. A request becomes one engine request per prompt and per
sample (``n``); the engine's :class:`~helpers.serving.engine.Stream` comes back as one JSON
answer or as server-sent events, a chunk per text piece, in the order the engine produced them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event

from helpers.serving import schema
from helpers.serving.chat import chat_prompt
from helpers.serving.engine import Engine, QueueFull, Result, SamplingParams, Stream, TokenLogprob
from helpers.serving.engine import Request as EngineRequest
from helpers.serving.schema import APIError, ChatCompletionRequest, CompletionRequest, Shape

logger = logging.getLogger("helpers.serving")

GenerationRequest = CompletionRequest | ChatCompletionRequest


class ClientGone(Exception):
    """The client closed the connection before its answer was complete (logged as one line, counted as 499)."""


def log_gone(http: Request, what: str) -> None:
    client = f"{http.client.host}:{http.client.port}" if http.client else "a client"
    logger.info("%s disconnected from %s %s; %s", client, http.method, http.url.path, what)


class Completions:
    """What ``/v1/completions`` and ``/v1/chat/completions`` do with a validated request, over one engine."""

    def __init__(self, engine: Engine, model_id: str):
        self.engine, self.model_id, self.limits = engine, model_id, engine.limits
        self.tokenizer, self.vocab = engine.tokenizer, len(engine.tokenizer)

    # ------------------------------------------------------------------ prompts and parameters

    def completion_prompts(self, request: CompletionRequest) -> list[list[int]]:
        """Each prompt as token ids: text is encoded, ids are checked against the vocabulary."""
        prompts = []
        for prompt in request.prompt:
            if isinstance(prompt, str):
                prompts.append(self.engine.encode(prompt))
            elif bad := [token for token in prompt if not 0 <= token < self.vocab]:
                raise APIError(400, f"prompt token id {bad[0]} is outside this model's vocabulary (0 to "
                                    f"{self.vocab - 1})", param="prompt", code="invalid_value")
            else:
                prompts.append(list(prompt))
        return prompts

    def chat_prompts(self, request: ChatCompletionRequest) -> list[list[int]]:
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        return [self.engine.encode(chat_prompt(self.tokenizer, messages))]

    def params(self, request: GenerationRequest, prompt_tokens: int, sample: int) -> SamplingParams:
        """Sample ``sample`` of ``n`` for a prompt of ``prompt_tokens``; a 400 when it cannot fit."""
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
        if isinstance(request, ChatCompletionRequest):
            logprobs = (request.top_logprobs or 0) if request.logprobs else None
        else:
            logprobs = request.logprobs
        seed = None if request.seed is None else (request.seed + sample) % 2**63  # n samples, n streams
        return SamplingParams(max_tokens, 1.0 if request.temperature is None else request.temperature,
                              1.0 if request.top_p is None else request.top_p, seed, tuple(request.stop), logprobs,
                              prompt_logprobs=bool(getattr(request, "echo", False)) and logprobs is not None)

    def open(self, request: GenerationRequest, prompts: list[list[int]]) -> Stream:
        """One engine request per prompt and sample (choice ``p * n + i``), queued together, or a 503."""
        if len(prompts) * request.n > self.limits.max_inputs:
            raise APIError(400, f"{len(prompts)} prompts x n={request.n} is more than this server's limit of "
                                f"{self.limits.max_inputs} choices", param="n", code="invalid_value")
        jobs = [EngineRequest(ids, self.params(request, len(ids), i), self.limits.generation_timeout_s, request.stream)
                for ids in prompts for i in range(request.n)]
        try:
            return self.engine.open(jobs)
        except QueueFull:
            raise APIError(503, f"the server is busy ({self.engine.waiting} requests waiting); retry in "
                                f"{self.limits.retry_after_s} s", code="server_busy", type="server_error",
                           headers={"Retry-After": str(self.limits.retry_after_s)}) from None

    # ------------------------------------------------------------------ answers

    async def answer(self, http: Request, request: GenerationRequest, prompts: list[list[int]]) -> Response:
        """Queue the request; then stream its text as server-sent events, or wait for the whole of it."""
        shape = Shape(isinstance(request, ChatCompletionRequest), self.model_id)
        stream = self.open(request, prompts)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return EventSourceResponse(self.events(http, stream, shape, include_usage, prompts),
                                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        results = await _results_unless_gone(http, stream)
        for result in results:
            self.raise_for(result)
        choices = [self.choice(shape, request, prompts[i // request.n], i, r) for i, r in enumerate(results)]
        return JSONResponse(shape.answer(choices, self.usage(prompts, results)))

    def usage(self, prompts: list[list[int]], results: list[Result]) -> dict:
        """Each prompt counted once (as OpenAI does with ``n``), every choice's tokens."""
        return schema.usage(sum(map(len, prompts)), sum(r.completion_tokens for r in results))

    def choice(self, shape: Shape, request: GenerationRequest, prompt: list[int], index: int, result: Result) -> dict:
        echo = bool(getattr(request, "echo", False))
        text = (self._decode(prompt) if echo else "") + result.text
        if result.logprobs is None:
            return shape.choice(index, text, result.finish_reason)
        if shape.chat:
            tokens = [(self._decode([t.token_id]), t.logprob, [(self._decode([i]), v) for i, v in t.top])
                      for t in result.logprobs]
            return shape.choice(index, text, result.finish_reason, schema.chat_logprobs(tokens))
        prompt_part = list(zip(prompt, result.prompt_logprobs)) if echo else []
        entries = [*prompt_part, *((t.token_id, t) for t in result.logprobs)]
        return shape.choice(index, text, result.finish_reason,
                            schema.completion_logprobs([self._entry(token, lp) for token, lp in entries]))

    def _entry(self, token: int, logprob: TokenLogprob | None) -> tuple[str, float | None, dict | None]:
        if logprob is None:  # the prompt's first token: nothing before it to predict it from
            return self._decode([token]), None, None
        return self._decode([token]), logprob.logprob, {self._decode([i]): v for i, v in logprob.top}

    def _decode(self, ids: list[int]) -> str:
        with self.engine.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

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

    async def events(self, http: Request, stream: Stream, shape: Shape, include_usage: bool,
                     prompts: list[list[int]]) -> AsyncIterator[bytes]:
        """Server-sent events: a chunk per text piece, a chunk per choice with its finish reason, the usage
        when asked for, then ``[DONE]``. What one forward pass produced goes out in one write."""
        results: list[Result] = []
        finished = False
        try:
            if shape.chat:
                yield b"".join(_event(shape.chunk(r.index, "", role=True)) for r in stream.requests)
            async for events in stream:
                out = []
                for index, event in events:
                    if isinstance(event, str):
                        out.append(_event(shape.chunk(index, event)))
                        continue
                    try:
                        self.raise_for(event)
                    except APIError as error:
                        finished = True
                        self.engine.metrics.errors.labels(http.url.path, error.type).inc()
                        yield b"".join([*out, _event(error.body()), _DONE])
                        return
                    results.append(event)
                    out.append(_event(shape.chunk(index, None if shape.chat else "", event.finish_reason)))
                yield b"".join(out)
            finished = True
            usage = [_event(shape.usage_chunk(self.usage(prompts, results)))] if include_usage else []
            yield b"".join([*usage, _DONE])
        finally:
            if not finished:
                stream.cancel()
                log_gone(http, f"stopped {shape.id} after {sum(r.completion_tokens for r in stream.requests)} tokens "
                               "of its stream")


_DONE = format_sse_event(data_str="[DONE]")


def _event(data: dict) -> bytes:
    return format_sse_event(data_str=json.dumps(data))


async def _results_unless_gone(http: Request, stream: Stream) -> list[Result]:
    """Every request's result, unless the client disconnects first: then the engine drops their rows."""

    async def disconnected() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    async def collect() -> list[Result]:
        results: list[Result | None] = [None] * len(stream.requests)
        async for events in stream:
            for index, event in events:
                if isinstance(event, Result):
                    results[index] = event
        return results

    gone, done = asyncio.ensure_future(disconnected()), asyncio.ensure_future(collect())
    try:
        await asyncio.wait({gone, done}, return_when=asyncio.FIRST_COMPLETED)
        if done.done():
            return done.result()
        stream.cancel()
        log_gone(http, f"stopped its generation after {sum(r.completion_tokens for r in stream.requests)} tokens")
        raise ClientGone()
    finally:
        gone.cancel()
        done.cancel()
