"""serving: the OpenAI-compatible API, its limits, auth, streaming, chat, disconnects and metrics.

The reference for what the service generates is transformers' own ``model.generate`` on the
same weights; for chat prompts, transformers' ``apply_chat_template``; for the metrics format,
``prometheus_client``'s parser. Tests that need real sockets (a client that leaves, a client
that is too slow) run uvicorn in a thread of this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from helpers import serving
from helpers.deployment import CHAT_TEMPLATE, export_release, with_chat_template
from helpers.models import tokenizer_dir
from helpers.serving import ServingLimits, build_app, free_port, make_server
from helpers.serving.cli import _bind
from helpers.serving.engine import Request as EngineRequest
from helpers.serving.engine import SamplingParams
from helpers.serving.load_generator import run_load

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny-release"  # the folder's name is the model id
CONTEXT = 128
WAIT_S = 60  # the longest any test here waits for the service


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    # small: 2 layers x 32 wide, random weights; the full GPT-2 vocabulary so the real tokenizer fits
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=CONTEXT)
    folder = tmp_path_factory.mktemp("serving") / MODEL
    GPT2LMHeadModel(config).save_pretrained(folder)
    with_chat_template(AutoTokenizer.from_pretrained(tokenizer_dir())).save_pretrained(folder)
    return folder


# The service runs on the CPU here so its output can be compared with a CPU reference on any
# machine (a GPU's kernels and random generator give other, equally valid, samples).
@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(build_app(model_dir, api_key=KEY, device="cpu")) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def reference(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def complete(client, path="/v1/completions", **fields):
    body = {"model": MODEL, "prompt": "To be, or not to be", "max_tokens": 8, "temperature": 0, **fields}
    response = client.post(path, headers=AUTH, json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 200, response.text
    return response.json()


def chat(client, **fields):
    return complete(client, "/v1/chat/completions", **{"prompt": None, **fields})


def stream(client, path="/v1/completions", **fields) -> tuple[list[dict], list[str]]:
    body = {"model": MODEL, "prompt": "To be, or not to be", "max_tokens": 8, "temperature": 0, "stream": True,
            **fields}
    body = {k: v for k, v in body.items() if v is not None}
    with client.stream("POST", path, headers=AUTH, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    payloads = [line.removeprefix("data: ") for line in lines]
    return [json.loads(p) for p in payloads if p != "[DONE]"], payloads


def reference_text(reference, tokenizer, prompt: str, max_new_tokens: int, **sampling) -> str:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def assert_openai_error(response, status: int, fragment: str, error_type: str = "invalid_request_error"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert fragment in error["message"], error["message"]
    return error


def scrape(client_or_url, headers=AUTH) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    if isinstance(client_or_url, str):
        response = httpx.get(f"{client_or_url}/metrics", headers=headers, timeout=WAIT_S)
    else:
        response = client_or_url.get("/metrics", headers=headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --------------------------------------------------------------------------- endpoints


def test_health_needs_no_key(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_models_lists_the_release_by_folder_name(client):
    listing = client.get("/v1/models", headers=AUTH).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [MODEL]
    assert listing["data"][0]["object"] == "model"
    assert client.get(f"/v1/models/{MODEL}", headers=AUTH).json()["id"] == MODEL
    assert_openai_error(client.get("/v1/models/gpt-4", headers=AUTH), 404, "does not exist")


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_api_docs_are_off(client, path):
    for headers in ({}, AUTH):
        assert_openai_error(client.get(path, headers=headers), 404, "Unknown request URL")


def test_completion_object_has_openai_shape(client):
    body = complete(client, max_tokens=5)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == MODEL and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == 7  # "To be, or not to be" in GPT-2 BPE
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 5


def test_greedy_text_equals_transformers_generate(client, reference, tokenizer):
    for prompt in ("To be, or not to be", "Hello world", "\u00c9t\u00e9 \u2014 caf\u00e9 \U0001f600"):
        body = complete(client, prompt=prompt, max_tokens=12)
        assert body["choices"][0]["text"] == reference_text(reference, tokenizer, prompt, 12, do_sample=False)


def test_tiny_temperatures_are_greedy(client):
    greedy = complete(client, max_tokens=10)["choices"][0]["text"]
    for temperature in (1e-38, 1e-9):
        assert complete(client, max_tokens=10, temperature=temperature, seed=3)["choices"][0]["text"] == greedy


def test_prompt_may_be_a_list_of_one_string(client):
    assert complete(client, prompt=["Hello world"])["choices"] == complete(client, prompt="Hello world")["choices"]


def test_seeded_sampling_repeats_and_equals_transformers(client, reference, tokenizer):
    fields = dict(prompt="Hello world", max_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    first, again = complete(client, **fields), complete(client, **fields)
    assert first["choices"][0]["text"] == again["choices"][0]["text"]
    torch.manual_seed(7)
    expected = reference_text(reference, tokenizer, "Hello world", 12, do_sample=True, temperature=0.9, top_p=0.95,
                              top_k=0)
    assert first["choices"][0]["text"] == expected
    other = complete(client, **{**fields, "seed": 8})
    assert other["choices"][0]["text"] != first["choices"][0]["text"]


def test_stop_sequence_cuts_the_text_and_stops(client):
    full = complete(client, max_tokens=12)["choices"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3
    body = complete(client, max_tokens=12, stop=[stop, "\u2603never"])
    assert body["choices"][0]["text"] == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < 12
    chunks, _ = stream(client, max_tokens=12, stop=stop)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[: full.index(stop)]


def test_stream_ends_with_done_and_equals_the_plain_answer(client):
    for fields in ({"max_tokens": 16}, {"max_tokens": 16, "temperature": 1.0, "seed": 3}):
        chunks, payloads = stream(client, **fields)
        assert payloads[-1] == "[DONE]"
        assert len(chunks) > 2  # text arrives piece by piece, not in one block
        assert {c["id"] for c in chunks} == {chunks[0]["id"]}
        assert all(c["object"] == "text_completion" for c in chunks)
        assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        streamed = "".join(c["choices"][0]["text"] for c in chunks)
        assert streamed == complete(client, **fields)["choices"][0]["text"]


def test_stream_can_report_usage(client):
    chunks, _ = stream(client, max_tokens=4, stream_options={"include_usage": True})
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


# --------------------------------------------------------------------------- chat

MESSAGES = [{"role": "system", "content": "You answer in verse."}, {"role": "user", "content": "Who goes there?"}]


def test_chat_goes_through_the_release_chat_template(client, tokenizer):
    body = chat(client, messages=MESSAGES, max_tokens=10)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("ASSISTANT.\n")
    assert body["usage"]["prompt_tokens"] == len(tokenizer(prompt).input_ids)
    assert choice["message"]["content"] == complete(client, prompt=prompt, max_tokens=10)["choices"][0]["text"]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Who goes "}, {"type": "text", "text": "there?"}]}]
    assert chat(client, messages=[MESSAGES[0], *parts], max_tokens=10)["choices"] == body["choices"]


def test_a_release_carries_the_chat_template_and_says_so(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, n_positions=16))  # small: only files matter
    release = export_release(model, tokenizer, tmp_path / "release")
    assert tokenizer.chat_template is None  # the caller's tokenizer is not changed
    assert AutoTokenizer.from_pretrained(release).chat_template == CHAT_TEMPLATE
    assert "/v1/chat/completions" in (release / "README.md").read_text(encoding="utf-8")


def test_chat_streams_chunks_with_a_role_first(client):
    chunks, payloads = stream(client, "/v1/chat/completions", prompt=None, messages=MESSAGES, max_tokens=12,
                              stream_options={"include_usage": True})
    assert payloads[-1] == "[DONE]"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == chat(client, messages=MESSAGES, max_tokens=12)["choices"][0]["message"]["content"]


def test_chat_without_a_template_says_how_to_get_one(tmp_path, model_dir):
    bare = tmp_path / "bare"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, n_positions=32)).save_pretrained(bare)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(bare)
    body = {"model": "bare", "messages": MESSAGES, "max_tokens": 2}
    with TestClient(build_app(bare, device="cpu")) as plain:
        assert_openai_error(plain.post("/v1/chat/completions", json=body), 400, "--chat-template FILE")
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    with TestClient(build_app(bare, device="cpu", chat_template=str(template))) as templated:
        response = templated.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("path", ["/v1/models", "/metrics"])
@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "didn't provide an API key"),
        ({"Authorization": "Bearer wrong-key"}, "Incorrect API key"),
        ({"Authorization": f"Basic {KEY}"}, "didn't provide an API key"),
        ({"Authorization": "Bearer "}, "didn't provide an API key"),
    ],
)
def test_endpoints_need_the_right_key(client, path, headers, fragment):
    error = assert_openai_error(client.get(path, headers=headers), 401, fragment)
    assert error["code"] == "invalid_api_key"
    assert client.get(path, headers=AUTH).status_code == 200


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_generation_needs_the_key(client, path):
    body = {"model": MODEL, "prompt": "Hi", "messages": MESSAGES}
    assert_openai_error(client.post(path, json=body), 401, "didn't provide an API key")
    assert_openai_error(client.post(path, json=body, headers={"Authorization": "Bearer x"}), 401, "Incorrect API key")


def test_without_a_key_everything_is_open(model_dir):
    with TestClient(build_app(model_dir, device="cpu")) as open_client:
        assert open_client.get("/v1/models").status_code == 200
        assert open_client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}).status_code == 200


# --------------------------------------------------------------------------- bad input

GOOD = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
BAD_INPUTS = [
    # (id, raw body or JSON-able dict, status, message fragment)
    ("malformed-json", b'{"model": "tiny-release", "prompt": ', 400, "not valid JSON: Expecting value: line 1"),
    ("unterminated-string", b'{"prompt": "Hello', 400, "Unterminated string starting at: line 1 column 12"),
    ("not-an-object", b"[1, 2, 3]", 400, "must be a JSON object"),
    ("empty-body", b"", 400, "request body is empty"),
    ("invalid-utf8", b'{"model": "tiny-release", "prompt": "\xff\xfe caf\xe9"}', 400, "not valid UTF-8"),
    ("nan", b'{"model": "tiny-release", "prompt": "x", "temperature": NaN}', 400, "NaN is not valid JSON"),
    ("lone-surrogate-prompt", b'{"model": "tiny-release", "prompt": "a\\ud800b"}', 400,
     "prompt holds a lone UTF-16 surrogate ('\\ud800' at character 1)"),
    ("lone-surrogate-model", b'{"model": "\\udfff", "prompt": "x"}', 400, "model holds a lone UTF-16 surrogate"),
    ("lone-surrogate-stop", b'{"model": "tiny-release", "prompt": "x", "stop": ["\\ud83d"]}', 400,
     "stop.0 holds a lone UTF-16 surrogate"),
    ("missing-model", {"prompt": "x"}, 400, "must provide a model parameter"),
    ("missing-prompt", {"model": MODEL}, 400, "must provide a prompt parameter"),
    ("prompt-number", {**GOOD, "prompt": 42}, 400, "prompt must be a string"),
    ("prompt-object", {**GOOD, "prompt": {"text": "x"}}, 400, "prompt must be a string"),
    ("prompt-mixed-list", {**GOOD, "prompt": ["a", 5]}, 400, "a list of token ids or a list of token-id lists"),
    ("prompt-empty-list", {**GOOD, "prompt": []}, 400, "prompt must be a string"),
    ("prompt-token-id-too-big", {**GOOD, "prompt": [15496, 50257]}, 400, "prompt token id 50257 is outside"),
    ("prompt-token-id-negative", {**GOOD, "prompt": [[-1]]}, 400, "prompt token id -1 is outside"),
    ("prompt-empty", {**GOOD, "prompt": ""}, 400, "prompt must not be empty"),
    ("prompt-empty-in-list", {**GOOD, "prompt": ["a", ""]}, 400, "prompt must not be empty"),
    ("prompt-too-many-tokens", {**GOOD, "prompt": " the" * 130}, 400, "maximum context length is 128 tokens"),
    ("prompt-plus-completion", {**GOOD, "prompt": " the" * 100, "max_tokens": 40}, 400, "(100 in your prompt; 40"),
    ("body-too-large", {**GOOD, "prompt": "x" * 70_000}, 413, "larger than this server's limit of 65,536 bytes"),
    ("max-tokens-string", {**GOOD, "max_tokens": "10"}, 400, "max_tokens: Input should be a valid integer"),
    ("max-tokens-float", {**GOOD, "max_tokens": 2.5}, 400, "max_tokens: Input should be a valid integer"),
    ("max-tokens-bool", {**GOOD, "max_tokens": True}, 400, "max_tokens: Input should be a valid integer"),
    ("max-tokens-zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens: Input should be greater than or equal to 1"),
    ("max-tokens-negative", {**GOOD, "max_tokens": -5}, 400, "greater than or equal to 1"),
    ("max-tokens-huge", {**GOOD, "max_tokens": 10**6}, 400, "more than this server's limit of 256"),
    ("temperature-negative", {**GOOD, "temperature": -0.1}, 400, "temperature: Input should be greater than or equal to 0"),
    ("temperature-too-high", {**GOOD, "temperature": 2.5}, 400, "temperature: Input should be less than or equal to 2"),
    ("temperature-string", {**GOOD, "temperature": "hot"}, 400, "temperature: Input should be a valid number"),
    ("top-p-zero", {**GOOD, "top_p": 0}, 400, "top_p: Input should be greater than 0"),
    ("top-p-too-high", {**GOOD, "top_p": 1.5}, 400, "top_p: Input should be less than or equal to 1"),
    ("n-zero", {**GOOD, "n": 0}, 400, "n: Input should be greater than or equal to 1"),
    ("n-too-many", {**GOOD, "n": 65}, 400, "more than this server's limit of 64 choices"),
    ("logprobs-too-many", {**GOOD, "logprobs": 6}, 400, "logprobs: Input should be less than or equal to 5"),
    ("logprobs-stream", {**GOOD, "logprobs": 1, "stream": True}, 400, "logprobs with stream: true is not supported"),
    ("echo-stream", {**GOOD, "echo": True, "stream": True}, 400, "echo with stream: true is not supported"),
    ("stop-number", {**GOOD, "stop": 5}, 400, "stop must be a string or a list of strings"),
    ("stop-mixed-list", {**GOOD, "stop": ["a", 1]}, 400, "stop must be a string or a list of strings"),
    ("stop-five", {**GOOD, "stop": list("abcde")}, 400, "at most 4 sequences"),
    ("stop-empty-string", {**GOOD, "stop": [""]}, 400, "must not be empty strings"),
    ("stream-string", {**GOOD, "stream": "yes"}, 400, "stream: Input should be a valid boolean"),
    ("seed-negative", {**GOOD, "seed": -1}, 400, "seed: Input should be greater than or equal to 0"),
    ("seed-string", {**GOOD, "seed": "abc"}, 400, "seed: Input should be a valid integer"),
    ("unknown-field", {**GOOD, "best_of": 5}, 400, "Unrecognized request argument supplied: best_of"),
    ("unsupported-options", {**GOOD, "presence_penalty": 0.5, "logit_bias": {"50256": -100}}, 400,
     "Unrecognized request arguments supplied: presence_penalty, logit_bias (not supported here)"),
    ("stream-options-alone", {**GOOD, "stream_options": {"include_usage": True}}, 400, "only allowed with stream"),
    ("unknown-model", {**GOOD, "model": "gpt-4"}, 404, "The model `gpt-4` does not exist"),
]
BAD_CHATS = [
    ("chat-no-messages", {**CHAT, "messages": []}, 400, "messages: List should have at least 1 item"),
    ("chat-messages-string", {**CHAT, "messages": "Hello"}, 400, "messages: Input should be a valid list"),
    ("chat-unknown-role", {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, 400,
     "messages.0.role: Input should be 'system', 'developer', 'user' or 'assistant'"),
    ("chat-content-number", {**CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ("chat-image-part", {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages.0.content"),
    ("chat-prompt-field", {**CHAT, "prompt": "x"}, 400, "Unrecognized request argument supplied: prompt"),
    ("chat-lone-surrogate", b'{"model": "tiny-release", "messages": [{"role": "user", "content": "\\ud800"}]}', 400,
     "messages.0.content holds a lone UTF-16 surrogate"),
    ("chat-too-long", {**CHAT, "messages": [{"role": "user", "content": " the" * 130}]}, 400,
     "maximum context length is 128 tokens"),
    ("chat-max-completion-tokens-huge", {**CHAT, "max_completion_tokens": 10**6}, 400, "limit of 256"),
    ("chat-top-logprobs-alone", {**CHAT, "top_logprobs": 2}, 400, "top_logprobs needs logprobs: true"),
    ("chat-top-logprobs-too-many", {**CHAT, "logprobs": True, "top_logprobs": 21}, 400, "less than or equal to 20"),
    ("chat-tools", {**CHAT, "tools": [], "tool_choice": "none"}, 400,
     "Unrecognized request arguments supplied: tools, tool_choice"),
]


def post_raw_or_json(client, path: str, body):
    if isinstance(body, bytes):
        return client.post(path, headers={**AUTH, "Content-Type": "application/json"}, content=body)
    return client.post(path, headers=AUTH, json=body)


@pytest.mark.parametrize(("body", "status", "fragment"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, body, status, fragment):
    assert_openai_error(post_raw_or_json(client, "/v1/completions", body), status, fragment)
    good = client.post("/v1/completions", headers=AUTH, json=GOOD)
    assert good.status_code == 200 and good.json()["choices"][0]["text"]


@pytest.mark.parametrize(("body", "status", "fragment"), [case[1:] for case in BAD_CHATS],
                         ids=[case[0] for case in BAD_CHATS])
def test_bad_chat_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, body, status, fragment):
    assert_openai_error(post_raw_or_json(client, "/v1/chat/completions", body), status, fragment)
    good = client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"] is not None


def test_body_cap_is_checked_before_parsing(client):
    # A body that is not even JSON, but too long: the size is the complaint, not the syntax.
    response = client.post("/v1/completions", headers={**AUTH, "Content-Type": "application/json"},
                           content=b"\xff" * 100_000)
    assert_openai_error(response, 413, "larger than this server's limit")


def test_unknown_path_and_wrong_method_answer_in_openai_shape(client):
    assert_openai_error(client.get("/v1/chat", headers=AUTH), 404, "Unknown request URL: GET /v1/chat")
    assert_openai_error(client.get("/v1/completions", headers=AUTH), 405, "Method GET is not allowed")


def test_an_unexpected_error_is_a_json_500_and_the_server_keeps_serving(client, monkeypatch, caplog):
    engine = client.app.state.engine
    encode = engine.encode
    monkeypatch.setattr(engine, "encode", lambda text: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="helpers.serving"):
        error = assert_openai_error(client.post("/v1/completions", headers=AUTH, json=GOOD), 500,
                                    "the server failed on this request", error_type="server_error")
    assert error["code"] == "internal_error"
    assert "ZeroDivisionError" in caplog.text  # the log keeps the traceback for whoever fixes it
    monkeypatch.setattr(engine, "encode", encode)
    assert client.post("/v1/completions", headers=AUTH, json=GOOD).status_code == 200


def test_a_failed_generation_step_is_a_json_500_and_the_engine_keeps_going(client, monkeypatch):
    engine = client.app.state.engine

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(engine, "_forward", broken)
    error = assert_openai_error(client.post("/v1/completions", headers=AUTH, json=GOOD), 500,
                                "generation failed on the server", error_type="server_error")
    assert error["code"] == "generation_failed"
    monkeypatch.undo()
    assert client.post("/v1/completions", headers=AUTH, json=GOOD).status_code == 200


# --------------------------------------------------------------------------- limits and concurrency


def test_generation_timeout_is_a_504_and_the_server_recovers(model_dir):
    limits = ServingLimits(generation_timeout_s=1e-6)  # any generation runs past this
    with TestClient(build_app(model_dir, limits=limits, device="cpu")) as slow:
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 50}
        error = assert_openai_error(slow.post("/v1/completions", json=body), 504,
                                    "did not finish within this server's limit", error_type="server_error")
        assert error["code"] == "generation_timeout"
        with slow.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
            payloads = [line.removeprefix("data: ") for line in response.iter_lines() if line]
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[-2])["error"]["code"] == "generation_timeout"
        assert slow.get("/health").json()["queued"] == 0
        engine = slow.app.state.engine
    assert engine._thread is not None and not engine._thread.is_alive()  # the lifespan stopped the engine


@contextmanager
def engine_held(engine, prompt_ids: list[int]):
    """A request that holds the engine's thread (its forward pass blocks) until the block ends."""
    release, started, forward = threading.Event(), threading.Event(), engine._forward

    def blocked_forward(*args, **kwargs):
        started.set()
        release.wait(WAIT_S)
        return forward(*args, **kwargs)

    engine._forward = blocked_forward
    held = EngineRequest(prompt_ids, SamplingParams(max_tokens=100, temperature=0.0), WAIT_S)
    engine.submit([held])
    assert started.wait(WAIT_S)
    try:
        yield held
    finally:
        held.cancel()
        del engine._forward
        release.set()


def test_a_full_queue_answers_503_with_retry_after(model_dir):
    app = build_app(model_dir, limits=ServingLimits(max_batch_size=2, max_queued=0), device="cpu")
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    with TestClient(app) as client:
        with engine_held(app.state.engine, [15496]):
            response = client.post("/v1/completions", json={**body, "n": 2})  # all of a request's choices, or none
            assert_openai_error(response, 503, "the server is busy", error_type="server_error")
            assert response.headers["retry-after"] == "1"
        assert client.post("/v1/completions", json=body).status_code == 200


def test_sixteen_concurrent_requests_all_succeed_with_their_own_seed(client):
    def ask(seed: int):
        body = {"model": MODEL, "prompt": f"Request {seed}:", "max_tokens": 6, "temperature": 1.0, "seed": seed}
        return client.post("/v1/completions", headers=AUTH, json=body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert [r.status_code for r in answers] == [200] * 16
    # Each concurrent answer equals the same request made alone: requests never share the random state.
    alone = [ask(seed) for seed in range(16)]
    assert [r.json()["choices"][0]["text"] for r in answers] == [r.json()["choices"][0]["text"] for r in alone]
    assert client.get("/health").json()["queued"] == 0


# --------------------------------------------------------------------------- metrics


def test_metrics_parse_as_prometheus_and_move(client):
    endpoint = ("endpoint", "/v1/completions")
    ok = ("course_requests_total", (endpoint, ("status", "200")))
    bad = ("course_requests_total", (endpoint, ("status", "400")))
    errors = ("course_errors_total", (endpoint, ("type", "invalid_request_error")))
    count = ("course_request_duration_seconds_count", (endpoint,))
    inf = ("course_request_duration_seconds_bucket", (endpoint, ("le", "+Inf")))
    tokens = ("course_generated_tokens_total", ())
    first_token = ("course_time_to_first_token_seconds_count", ())
    before = scrape(client)
    generated = complete(client, max_tokens=5)["usage"]["completion_tokens"]
    client.post("/v1/completions", headers=AUTH, json={**GOOD, "max_tokens": 0})
    after = scrape(client)
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1
    assert after[errors] == before.get(errors, 0) + 1
    assert after[count] == before.get(count, 0) + 2 == after[inf]
    assert after[tokens] == before.get(tokens, 0) + generated
    assert after[first_token] == before.get(first_token, 0) + 1
    assert after[("course_queue_depth", ())] == 0 and after[("course_batch_size", ())] == 0
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in after.items()
                     if name == "course_request_duration_seconds_bucket" and dict(labels)["endpoint"] == endpoint[1])
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert after[("course_model_info", (("model", MODEL),))] == 1


# --------------------------------------------------------------------------- real sockets: clients that leave or dawdle

SLOW_LIMITS = ServingLimits(header_timeout_s=0.5, body_timeout_s=0.5)


@pytest.fixture
def live(model_dir):
    """uvicorn in a thread, serving an app whose model takes 20 ms a step (so a client can leave mid-way)."""
    app = build_app(model_dir, limits=SLOW_LIMITS, device="cpu")
    engine, forward = app.state.engine, app.state.engine._forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.02)
        return forward(*args, **kwargs)

    engine._forward = slow_forward
    port = free_port()
    server = make_server(app, SLOW_LIMITS, port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


def assert_left_within_one_step(url: str, app, caplog) -> None:
    engine = app.state.engine
    wait_for(lambda: engine.running == 0 and engine.waiting == 0, "the abandoned row to leave")
    metrics = scrape(url, headers={})
    assert metrics[("course_cancelled_requests_total", ())] == 1
    assert metrics[("course_abandoned_tokens_total", ())] <= 1  # tokens generated after the client had gone
    assert metrics[("course_generated_tokens_total", ())] < 100  # it did not run to max_tokens
    gone = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(gone) == 1 and gone[0].exc_info is None, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert httpx.get(f"{url}/health", timeout=WAIT_S).json()["status"] == "ok"


def test_a_client_that_leaves_a_plain_request_frees_its_row(live, caplog):
    url, app = live
    caplog.set_level(logging.INFO, logger="helpers.serving")
    body = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 100}).encode()
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=WAIT_S) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: app.state.engine.metrics.registry.get_sample_value("course_generated_tokens_total") >= 3,
                 "the first tokens")
    assert_left_within_one_step(url, app, caplog)
    wait_for(lambda: scrape(url, headers={}).get(
        ("course_requests_total", (("endpoint", "/v1/completions"), ("status", "499")))) == 1, "the 499 count")


def test_a_client_that_leaves_a_stream_frees_its_row(live, caplog):
    url, app = live
    caplog.set_level(logging.INFO, logger="helpers.serving")
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 100, "stream": True}
    with httpx.Client(timeout=WAIT_S) as http, http.stream("POST", f"{url}/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert [next(lines) for _ in range(3)][0].startswith("data: ")
    assert_left_within_one_step(url, app, caplog)


def test_the_load_generator_times_every_answer_and_counts_every_failure(live):
    url, _ = live
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0}

    async def from_a_running_event_loop():  # as in Jupyter, whose loop runs in the notebook's thread
        return run_load(url, body, clients=3, requests_per_client=2)

    answered = asyncio.run(from_a_running_event_loop())
    assert answered.errors == [] and len(answered.timings) == 6
    assert all(0 < t.completion_tokens <= 4 and 0 < t.first_token_s <= t.total_s <= answered.wall_s
               for t in answered.timings)
    refused = run_load(url, {**body, "model": "no-such-model"}, clients=2, requests_per_client=2)
    assert refused.timings == [] and len(refused.errors) == 4 and all("HTTP 404" in e for e in refused.errors)


def test_connections_to_the_listening_socket_send_small_writes_at_once():
    """Nagle's algorithm is off on every accepted connection (asyncio sets TCP_NODELAY only when the
    listening socket says it is TCP); with it on, streamed tokens on a kept-alive connection waited
    40 ms for the client's delayed ACK."""
    sock = _bind("127.0.0.1", 0)
    nodelay = []

    class Accept(asyncio.Protocol):
        def connection_made(self, transport):
            nodelay.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one():
        server = await asyncio.get_running_loop().create_server(Accept, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            while not nodelay:
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(asyncio.wait_for(accept_one(), WAIT_S))
    assert nodelay[0] != 0


def test_slow_headers_are_cut_off_and_the_server_keeps_serving(live):
    url, _ = live
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=WAIT_S) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\n")  # and then nothing
        start = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.monotonic() - start < WAIT_S
    assert httpx.get(f"{url}/health", timeout=WAIT_S).status_code == 200


def test_a_slow_body_gets_408_and_the_server_keeps_serving(live):
    url, _ = live
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=WAIT_S) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\": ")  # 10 of the 100 bytes promised
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert httpx.get(f"{url}/health", timeout=WAIT_S).status_code == 200


# --------------------------------------------------------------------------- setup and command-line errors


def test_setup_errors_name_the_problem(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_app(tmp_path / "missing")
    bare = tmp_path / "bare"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, n_positions=16)).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        build_app(bare)
    with pytest.raises(ValueError, match="max_tokens_cap must be >= 1"):
        ServingLimits(max_tokens_cap=0)
    with pytest.raises(ValueError, match="int8 dynamic quantization runs on the CPU only"):
        build_app(model_dir, device="cuda", int8=True)
    with pytest.raises(FileNotFoundError, match="neither a file nor a Jinja template"):
        build_app(model_dir, chat_template="no-such-template.jinja")


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        serving.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_command_line_mistakes_are_one_clear_line(tmp_path, capsys, model_dir):
    err = one_line_error(capsys, ["--model", str(model_dir), "--port", "70000"])
    assert "argument --port: 70000 is out of range: use 1 to 65535" in err
    assert "is not a whole number" in one_line_error(capsys, ["--model", str(model_dir), "--max-batch-size", "x"])
    assert "required: --model" in one_line_error(capsys, [])
    assert serving.main(["--model", str(tmp_path / "nope"), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "no config.json" in err and err.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serving.main(["--model", str(model_dir), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and err.count("\n") == 1


def test_help_describes_the_service(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serving.main(["--help"])
    assert exit_info.value.code == 0
    assert "--max-batch-size" in capsys.readouterr().out


# --------------------------------------------------------------------------- the chat page


def test_the_chat_page_is_one_offline_file_pinned_by_its_csp(client):
    import base64
    import hashlib
    import re

    page = client.get("/")  # no key: the page asks for it, the API checks it
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = dict(rule.split(" ", 1) for rule in page.headers["content-security-policy"].split("; "))
    (script,) = re.findall(r"<script>(.*?)</script>", page.text, flags=re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy["script-src"] == f"'sha256-{digest}'" and policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'" and policy["img-src"] == "'none'"
    assert not re.search(r"(src|href)=\"?(https?:)?//", page.text)  # nothing fetched from elsewhere
    assert "innerHTML" not in script and "textContent" in script
