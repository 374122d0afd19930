"""serving: ``/classify`` and ``/v1/classify`` for a sequence classifier, in vLLM's shape.

The model is a tiny random ``GPT2ForSequenceClassification`` with labels negative/positive,
saved with the shipped tokenizer; the reference is the same model, one text at a time, through
transformers. A classifier and a causal LM each answer 404 (saying why) on the other's routes.
"""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from helpers.models import tokenizer_dir
from helpers.serving import build_app
from helpers.serving.loading import is_classifier

CONTEXT = 64
TEXTS = ["What a wonderful play.", "Dull, long and badly acted, I left at the interval", "Fine."]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=CONTEXT, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                        pad_token_id=50256)
    path = tmp_path_factory.mktemp("classify") / "sentiment"
    GPT2ForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def client(folder):
    with TestClient(build_app(folder, device="cpu")) as test_client:
        yield test_client


def one_at_a_time(folder, text: str) -> list[float]:
    model = GPT2ForSequenceClassification.from_pretrained(folder).eval()
    ids = AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0].softmax(-1).tolist()


def test_the_config_tells_a_classifier_from_a_causal_lm(folder, tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, n_positions=16)).save_pretrained(tmp_path / "lm")
    assert is_classifier(folder) and not is_classifier(tmp_path / "lm")


@pytest.mark.parametrize("path", ["/classify", "/v1/classify"])
def test_a_batch_of_texts_gets_vllms_shape_and_the_models_own_probabilities(client, folder, path):
    body = client.post(path, json={"model": "sentiment", "input": TEXTS}).json()
    assert body["object"] == "list" and body["model"] == "sentiment" and isinstance(body["created"], int)
    assert body["id"].startswith("classify-")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens = sum(len(tokenizer(t).input_ids) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    for i, (item, text) in enumerate(zip(body["data"], TEXTS)):
        expected = one_at_a_time(folder, text)  # alone, unpadded: the batch's padding changes nothing
        assert item["index"] == i and item["num_classes"] == 2
        assert item["probs"] == pytest.approx(expected, abs=1e-5)
        assert item["label"] == ("negative", "positive")[max(range(2), key=expected.__getitem__)]


def test_one_string_is_one_item(client):
    data = client.post("/v1/classify", json={"model": "sentiment", "input": TEXTS[0]}).json()["data"]
    assert len(data) == 1 and sum(data[0]["probs"]) == pytest.approx(1.0)


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"model": "sentiment", "input": ""}, 400, "input must not hold empty strings"),
    ({"model": "sentiment", "input": []}, 400, "input"),
    ({"model": "sentiment", "input": ["ok", ""]}, 400, "input must not hold empty strings"),
    ({"model": "sentiment", "input": " the" * (CONTEXT + 1)}, 400, "maximum context length is 64 tokens"),
    ({"model": "sentiment", "input": 5}, 400, "input"),
    ({"model": "sentiment"}, 400, "must provide a input parameter"),
    ({"model": "sentiment", "input": "x", "truncate_prompt_tokens": 3}, 400, "truncate_prompt_tokens"),
    ({"model": "gpt-4", "input": "x"}, 404, "does not exist"),
])
def test_bad_input_is_a_4xx_in_openais_envelope(client, body, status, fragment):
    response = client.post("/v1/classify", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and fragment in error["message"]


def test_each_kind_says_why_the_others_routes_are_not_here(client, tmp_path):
    for path in ("/v1/completions", "/v1/chat/completions"):
        response = client.post(path, json={"model": "sentiment", "prompt": "x"})
        assert response.status_code == 404 and "is a sequence classifier" in response.json()["error"]["message"]
    lm = tmp_path / "lm"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, n_positions=16)).save_pretrained(lm)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(lm)
    with TestClient(build_app(lm, device="cpu")) as causal:
        response = causal.post("/v1/classify", json={"model": "lm", "input": "x"})
        assert response.status_code == 404 and "is a causal language model" in response.json()["error"]["message"]


@pytest.mark.slow
def test_the_command_line_serves_a_classifier_folder_as_a_classifier(folder):
    import httpx

    from helpers.serving import start_background

    with start_background(folder, extra_args=["--device", "cpu"]) as server:
        answer = httpx.post(f"{server.url}/v1/classify", json={"model": "sentiment", "input": TEXTS}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["data"]) == len(TEXTS)
        refused = httpx.post(f"{server.url}/v1/completions", json={"model": "sentiment", "prompt": "x"}, timeout=60)
        assert refused.status_code == 404 and "sequence classifier" in refused.json()["error"]["message"]
