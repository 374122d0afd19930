"""Exercise checks of ``10_deployment.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helpers.exercises.core import CORRECT, WRONG, _check, _not_done, _unanswered

LATENCY_EXERCISE_MS = (112.0, 98.0, 105.0, 131.0, 99.0, 240.0, 101.0, 97.0, 118.0, 104.0, 103.0, 350.0)
_PERCENTILE_CASES = ((LATENCY_EXERCISE_MS, (50, 95, 99, 0, 100)), ((7.0,), (50, 95)), ((2.0, 1.0), (25, 50, 95)),
                     ((5.0, 1.0, 4.0, 4.0, 9.0, 2.0), (10, 33.3, 90)))
KV_CACHE_EXERCISE = dict(n_layer=12, n_embd=768, requests=16, tokens=1_024, bytes_per_value=2)  # GPT-2 small, fp16


def check_percentile(fn: Callable | None) -> None:
    """Exercise 1 of ``10_deployment.ipynb``: ``fn(values, q)``, the q-th percentile (0-100) with linear
    interpolation, compared with ``numpy.percentile`` (its default method) on a few lists."""
    name = "percentile of request times"
    if _not_done(name, fn):
        return
    hint = ("sort the values; the q-th percentile sits at position q / 100 x (n - 1) of the sorted list; when that "
            "position falls between two values, interpolate linearly between them.")
    worst = 0.0
    for values, qs in _PERCENTILE_CASES:
        for q in qs:
            expected = float(np.percentile(values, q))
            try:
                got = float(fn(list(values), q))
            except Exception as error:  # a learner's bug must not stop the notebook
                print(f"{WRONG}: {name}: p{q:g} of {list(values)} raised {type(error).__name__}: {error}. Hint: {hint}")
                return
            if not abs(got - expected) <= 1e-9 * max(1.0, abs(expected)):
                print(f"{WRONG}: {name}: p{q:g} of {list(values)} is {expected:g} (numpy.percentile), you give {got:g}. "
                      f"Hint: {hint}")
                return
            worst = max(worst, abs(got - expected))
    count = sum(len(qs) for _, qs in _PERCENTILE_CASES)
    print(f"{CORRECT}: {name}: equals numpy.percentile in {count} cases (max |difference| {worst:.1e})")


def _openai_error(client, prompt: str, max_tokens: int):
    """The official client's error for one completion request, or None when it succeeded."""
    import openai

    try:
        client.completions.create(model="any", prompt=prompt, max_tokens=max_tokens, temperature=0)
    except openai.APIStatusError as error:
        return error
    return None


def check_context_limit(app, context_len: int) -> None:
    """Exercise 2 of ``10_deployment.ipynb``: a completion endpoint that refuses what does not fit the context.

    ``app`` is a FastAPI app with ``POST /v1/completions``; the official ``openai`` client calls it in
    this process (FastAPI's ``TestClient`` as its HTTP client): a short prompt must be answered, and a
    prompt whose tokens plus ``max_tokens`` exceed ``context_len`` must get HTTP 400 in OpenAI's error
    shape, with a message that names the limit.
    """
    from fastapi.testclient import TestClient
    from openai import OpenAI

    name = "an endpoint that checks the context"
    if _unanswered(name, app):
        return
    if not callable(app):
        print(f"{WRONG}: {name}: pass the FastAPI app itself (limited_app = FastAPI() ...), not a {type(app).__name__}")
        return
    hint = (f"count the prompt's tokens first; when they plus max_tokens exceed {context_len}, return "
            "JSONResponse(status_code=400, content={'error': {'message': ..., 'type': 'invalid_request_error', "
            "'param': 'prompt', 'code': 'context_length_exceeded'}}) with the limit in the message.")
    cases = (("a short prompt", "ROMEO.\nWhat light", 2, None),
             ("a prompt longer than the context", " the" * (context_len + 10), 2, 400),
             ("a prompt that fits, but not with its max_tokens", " the" * (context_len - 2), 8, 400))
    try:
        with TestClient(app, raise_server_exceptions=False) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
            for what, prompt, max_tokens, status in cases:
                error = _openai_error(client, prompt, max_tokens)
                got = None if error is None else error.status_code
                if got != status:
                    said = "answered it" if got is None else f"answered HTTP {got}"
                    print(f"{WRONG}: {name}: for {what} ({max_tokens} new tokens) your endpoint {said}; expected "
                          f"{'an answer' if status is None else f'HTTP {status}'}. Hint: {hint}")
                    return
                body = error.body if error is not None else None
                if status and not (isinstance(body, dict) and str(context_len) in str(body.get("message", ""))):
                    print(f"{WRONG}: {name}: HTTP 400 is right, but the official client found no message naming the "
                          f"limit ({context_len}) under 'error'. Hint: {hint}")
                    return
    except Exception as error:  # a learner's app must not stop the notebook
        print(f"{WRONG}: {name}: calling your app failed with {type(error).__name__}: {error}. Hint: {hint}")
        return
    print(f"{CORRECT}: {name}: the official openai client gets an answer to a short prompt and a readable HTTP 400 "
          f"for both prompts that do not fit {context_len} tokens")


def check_kv_cache_bytes(answer) -> None:
    """Exercise 3 of ``10_deployment.ipynb``: bytes of the KV cache of ``KV_CACHE_EXERCISE`` (GPT-2 small, fp16).

    The reference runs transformers' GPT-2 on the meta device (shapes only, no memory) with a batch of
    that many requests and sums the sizes of the cache it returns.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    case = KV_CACHE_EXERCISE
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_layer=case["n_layer"], n_embd=case["n_embd"])).to(torch.float16)
        cache = model(torch.zeros(case["requests"], case["tokens"], dtype=torch.long), use_cache=True)["cache"]
    expected = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    _check(
        "bytes of the KV cache",
        answer,
        expected,
        "every layer keeps a key and a value vector of n_embd numbers for every token of every request: "
        "2 x layers x requests x tokens x n_embd numbers, 2 bytes each in fp16.",
        atol=0.5,
    )
