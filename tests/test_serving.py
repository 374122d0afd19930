"""serving: the OpenAI-compatible API, its limits, auth, streaming, concurrency and metrics.

The reference for what the service generates is transformers' own ``model.generate`` on the
same weights; the reference for the metrics format is ``prometheus_client``'s parser.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from helpers import serving
from helpers.models import tokenizer_dir
from helpers.serving import ServingLimits, create_app

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny-release"  # the folder's name is the model id
CONTEXT = 128


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    # small: 2 layers x 32 wide, random weights; the full GPT-2 vocabulary so the real tokenizer fits
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=CONTEXT)
    folder = tmp_path_factory.mktemp("serving") / MODEL
    GPT2LMHeadModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(folder)
    return folder


# The service runs on the CPU here so its output can be compared with a CPU reference on any
# machine (a GPU's kernels and random generator give other, equally valid, samples).
@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(create_app(model_dir, api_key=KEY, device="cpu")) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def reference(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def complete(client, **fields):
    body = {"model": MODEL, "prompt": "To be, or not to be", "max_tokens": 8, "temperature": 0, **fields}
    response = client.post("/v1/completions", headers=AUTH, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def stream(client, **fields) -> tuple[list[dict], list[str]]:
    body = {"model": MODEL, "prompt": "To be, or not to be", "max_tokens": 8, "temperature": 0, "stream": True, **fields}
    with client.stream("POST", "/v1/completions", headers=AUTH, json=body) as response:
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


def feed(tokenizer, text: str, stop: list[str]) -> tuple[list[str], serving._TextEmitter]:
    pieces: list[str] = []
    emitter = serving._TextEmitter(tokenizer, threading.Lock(), stop, pieces.append)
    emitter.put(torch.tensor([[0]]))  # generate() hands over the prompt first
    for token in tokenizer(text).input_ids:
        emitter.put(torch.tensor([token]))
    emitter.end()
    return pieces, emitter


def test_streamed_pieces_never_split_a_character_or_leak_a_stop(tokenizer):
    text = "caf\u00e9 \U0001f600\U0001f600 \u65e5\u672c"  # multi-byte characters split over several BPE tokens
    assert len(tokenizer(text).input_ids) > len(text.split())
    pieces, emitter = feed(tokenizer, text, [])
    assert "".join(pieces) == emitter.text == text
    assert not any("\ufffd" in piece for piece in pieces)
    pieces, emitter = feed(tokenizer, "Hello world, hello there", ["lo wo", "never"])
    assert "".join(pieces) == emitter.text == "Hel" and emitter.stopped


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


def test_completions_need_the_key(client):
    body = {"model": MODEL, "prompt": "Hi"}
    assert_openai_error(client.post("/v1/completions", json=body), 401, "didn't provide an API key")
    assert_openai_error(client.post("/v1/completions", json=body, headers={"Authorization": "Bearer x"}), 401,
                        "Incorrect API key")


def test_without_a_key_everything_is_open(model_dir):
    with TestClient(create_app(model_dir, device="cpu")) as open_client:
        assert open_client.get("/v1/models").status_code == 200
        assert open_client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}).status_code == 200


# --------------------------------------------------------------------------- bad input

GOOD = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
BAD_INPUTS = [
    # (id, raw body or JSON-able dict, status, message fragment)
    ("malformed-json", b'{"model": "tiny-release", "prompt": ', 400, "not valid JSON"),
    ("not-an-object", b"[1, 2, 3]", 400, "must be a JSON object"),
    ("empty-body", b"", 400, "request body is empty"),
    ("invalid-utf8", b'{"model": "tiny-release", "prompt": "\xff\xfe caf\xe9"}', 400, "not valid UTF-8"),
    ("nan", b'{"model": "tiny-release", "prompt": "x", "temperature": NaN}', 400, "NaN is not valid JSON"),
    ("missing-model", {"prompt": "x"}, 400, "must provide a model parameter"),
    ("missing-prompt", {"model": MODEL}, 400, "must provide a prompt parameter"),
    ("prompt-number", {**GOOD, "prompt": 42}, 400, "prompt must be a string"),
    ("prompt-object", {**GOOD, "prompt": {"text": "x"}}, 400, "prompt must be a string"),
    ("prompt-batch", {**GOOD, "prompt": ["a", "b"]}, 400, "list of exactly one string"),
    ("prompt-token-ids", {**GOOD, "prompt": [15496, 995]}, 400, "list of exactly one string"),
    ("prompt-empty", {**GOOD, "prompt": ""}, 400, "prompt must not be empty"),
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
    ("n-two", {**GOOD, "n": 2}, 400, "n must be 1"),
    ("stop-number", {**GOOD, "stop": 5}, 400, "stop must be a string or a list of strings"),
    ("stop-mixed-list", {**GOOD, "stop": ["a", 1]}, 400, "stop must be a string or a list of strings"),
    ("stop-five", {**GOOD, "stop": list("abcde")}, 400, "at most 4 sequences"),
    ("stop-empty-string", {**GOOD, "stop": [""]}, 400, "must not be empty strings"),
    ("stream-string", {**GOOD, "stream": "yes"}, 400, "stream: Input should be a valid boolean"),
    ("seed-negative", {**GOOD, "seed": -1}, 400, "seed: Input should be greater than or equal to 0"),
    ("seed-string", {**GOOD, "seed": "abc"}, 400, "seed: Input should be a valid integer"),
    ("unknown-field", {**GOOD, "logprobs": 5}, 400, "Unrecognized request argument supplied: logprobs"),
    ("stream-options-alone", {**GOOD, "stream_options": {"include_usage": True}}, 400, "only allowed with stream"),
    ("unknown-model", {**GOOD, "model": "gpt-4"}, 404, "The model `gpt-4` does not exist"),
]


@pytest.mark.parametrize(("body", "status", "fragment"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, body, status, fragment):
    if isinstance(body, bytes):
        response = client.post("/v1/completions", headers={**AUTH, "Content-Type": "application/json"}, content=body)
    else:
        response = client.post("/v1/completions", headers=AUTH, json=body)
    assert_openai_error(response, status, fragment)
    good = client.post("/v1/completions", headers=AUTH, json=GOOD)
    assert good.status_code == 200 and good.json()["choices"][0]["text"]


def test_body_cap_is_checked_before_parsing(client):
    # A body that is not even JSON, but too long: the size is the complaint, not the syntax.
    response = client.post("/v1/completions", headers={**AUTH, "Content-Type": "application/json"},
                           content=b"\xff" * 100_000)
    assert_openai_error(response, 413, "larger than this server's limit")


def test_unknown_path_and_wrong_method_answer_in_openai_shape(client):
    assert_openai_error(client.get("/v1/chat", headers=AUTH), 404, "Unknown request URL: GET /v1/chat")
    assert_openai_error(client.get("/v1/completions", headers=AUTH), 405, "Method GET is not allowed")


# --------------------------------------------------------------------------- limits and concurrency


def test_generation_timeout_is_a_504_and_the_server_recovers(model_dir):
    limits = ServingLimits(generation_timeout_s=1e-6)  # any generation runs past this
    with TestClient(create_app(model_dir, limits=limits, device="cpu")) as slow:
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
    assert engine.executor is None  # the lifespan shut the worker thread down


def test_a_full_queue_answers_503(model_dir):
    app = create_app(model_dir, limits=ServingLimits(max_queued=1), device="cpu")
    engine, release = app.state.engine, threading.Event()
    engine._generate = lambda job: release.wait(10)  # hold the model so the queue stays full
    with TestClient(app) as busy:
        held = engine.submit(serving._Job([1], 1, 0.0, 1.0, [], None, threading.Event()))
        try:
            response = busy.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
            assert_openai_error(response, 503, "the server is busy", error_type="server_error")
        finally:
            release.set()
            held.result(timeout=10)


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


def scrape(client) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_parse_as_prometheus_and_move(client):
    endpoint = ("endpoint", "/v1/completions")
    ok = ("course_requests_total", (endpoint, ("status", "200")))
    bad = ("course_requests_total", (endpoint, ("status", "400")))
    errors = ("course_errors_total", (endpoint, ("type", "invalid_request_error")))
    count = ("course_request_duration_seconds_count", (endpoint,))
    inf = ("course_request_duration_seconds_bucket", (endpoint, ("le", "+Inf")))
    tokens = ("course_generated_tokens_total", ())
    before = scrape(client)
    generated = complete(client, max_tokens=5)["usage"]["completion_tokens"]
    client.post("/v1/completions", headers=AUTH, json={**GOOD, "max_tokens": 0})
    after = scrape(client)
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1
    assert after[errors] == before.get(errors, 0) + 1
    assert after[count] == before.get(count, 0) + 2 == after[inf]
    assert after[tokens] == before.get(tokens, 0) + generated
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in after.items()
                     if name == "course_request_duration_seconds_bucket" and dict(labels)["endpoint"] == endpoint[1])
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert after[("course_model_info", (("model", MODEL),))] == 1


# --------------------------------------------------------------------------- setup errors


def test_setup_errors_name_the_problem(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        create_app(tmp_path / "missing")
    bare = tmp_path / "bare"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, n_positions=16)).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        create_app(bare)
    with pytest.raises(ValueError, match="max_tokens_cap must be >= 1"):
        ServingLimits(max_tokens_cap=0)
    with pytest.raises(ValueError, match="int8 dynamic quantization runs on the CPU only"):
        create_app(model_dir, device="cuda", int8=True)


def test_command_line_reports_a_bad_model_folder(tmp_path, capsys):
    assert serving.main(["--model", str(tmp_path / "nope")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_int8_serving_answers(model_dir):
    with TestClient(create_app(model_dir, int8=True)) as int8_client:
        response = int8_client.post("/v1/completions", json={**GOOD, "temperature": 0})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_serving_on_cuda_matches_generate_on_cuda(model_dir, tokenizer):
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cuda").eval()
    with TestClient(create_app(model_dir, device="cuda")) as cuda_client:
        response = cuda_client.post("/v1/completions", json={**GOOD, "max_tokens": 8, "temperature": 0})
    ids = tokenizer("Hello", return_tensors="pt").input_ids.to("cuda")
    with torch.no_grad():
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert response.json()["choices"][0]["text"] == expected
