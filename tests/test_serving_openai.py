"""serving: the OpenAI options clients send, each through the official ``openai`` client.

The client talks to the app through FastAPI's ``TestClient`` (an ``httpx.Client``), so every
request is the client's own wire format. The model is a tiny random GPT-2 whose tokenizer carries
an assistant-style chat template (``<|user|>``, ``<|assistant|>``, ``<|end|>`` as special tokens,
the shape of 09's release). References: the model's own ``log_softmax`` over its logits,
transformers' ``generate`` and ``apply_chat_template``, and separate single requests.
"""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from helpers.models import tokenizer_dir
from helpers.serving import build_app

openai = pytest.importorskip("openai")

KEY = "options-key"
MODEL = "assistant-like"
CONTEXT = 128
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MESSAGES = [{"role": "user", "content": "What rhymes with moon?"}]
PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=CONTEXT, vocab_size=len(tokenizer))
    path = tmp_path_factory.mktemp("options") / MODEL
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def app(folder):
    app = build_app(folder, api_key=KEY, device="cpu")
    with TestClient(app) as http:
        app.state.http = http
        yield app


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=app.state.http, max_retries=0)


@pytest.fixture(scope="module")
def reference(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tok(folder):
    return AutoTokenizer.from_pretrained(folder)


def greedy_ids(reference, tok, prompt_ids: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
    return out[0, len(prompt_ids):].tolist()


def log_softmax(reference, ids: list[int]) -> torch.Tensor:
    """(len(ids), vocab): row i is the model's log-distribution of the token after ids[: i + 1]."""
    with torch.no_grad():
        return torch.log_softmax(reference(torch.tensor([ids])).logits[0].float(), -1)


def piece(tok, token: int) -> str:
    return tok.decode([token], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_the_template_ends_a_turn_at_its_end_token(app, tok):
    assert app.state.engine.stop_ids == {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")}


def test_chat_stops_at_the_end_of_turn_token(app, client, tok, monkeypatch):
    engine, forward, end = app.state.engine, app.state.engine._forward, tok.convert_tokens_to_ids("<|end|>")

    def end_at_once(*args, **kwargs):  # the model's favourite next token is always <|end|>
        logits = forward(*args, **kwargs)
        logits[..., end] += 1e4
        return logits

    monkeypatch.setattr(engine, "_forward", end_at_once)
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content == ""
    assert answer.usage.completion_tokens == 1


def test_chat_prompt_is_the_template_and_usage_counts_it(client, tok):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0)
    prompt_ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert answer.usage.prompt_tokens == len(prompt_ids)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_n_samples_are_independent_and_seeded(client):
    fields = dict(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=5)
    three = client.completions.create(n=3, **fields)
    assert [c.index for c in three.choices] == [0, 1, 2]
    alone = [client.completions.create(**{**fields, "seed": 5 + i}).choices[0].text for i in range(3)]
    assert [c.text for c in three.choices] == alone  # sample i is the request seeded seed + i
    assert len(set(alone)) > 1
    assert three.usage.completion_tokens == sum(
        client.completions.create(**{**fields, "seed": 5 + i}).usage.completion_tokens for i in range(3))
    assert three.usage.prompt_tokens == client.completions.create(**fields).usage.prompt_tokens  # once, not n times
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, max_tokens=6, temperature=1.0, seed=1)
    assert len(chat.choices) == 2


def test_completion_logprobs_are_the_models_log_softmax(client, reference, tok):
    prompt_ids = tok(PROMPT).input_ids
    expected = greedy_ids(reference, tok, prompt_ids, 6)
    answer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    logprobs = answer.choices[0].logprobs
    table = log_softmax(reference, prompt_ids + expected)
    assert logprobs.tokens == [piece(tok, t) for t in expected]
    for k, token in enumerate(expected):
        row = table[len(prompt_ids) - 1 + k]
        assert logprobs.token_logprobs[k] == pytest.approx(float(row[token]), abs=1e-4)
        top = row.topk(3)
        assert list(logprobs.top_logprobs[k]) == [piece(tok, t) for t in top.indices.tolist()]
        assert list(logprobs.top_logprobs[k].values()) == pytest.approx(top.values.tolist(), abs=1e-4)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset[1] == len(logprobs.tokens[0])


def test_chat_logprobs_and_top_logprobs_are_the_models_log_softmax(client, reference, tok):
    prompt_ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = greedy_ids(reference, tok, prompt_ids, 5)
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                            logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    table = log_softmax(reference, prompt_ids + expected)
    assert len(content) == answer.usage.completion_tokens
    for k, entry in enumerate(content):
        row = table[len(prompt_ids) - 1 + k]
        assert entry.token == piece(tok, expected[k])
        assert entry.logprob == pytest.approx(float(row[expected[k]]), abs=1e-4)
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(row.topk(2).values.tolist(), abs=1e-4)


def test_echo_with_logprobs_scores_the_prompt_itself(client, reference, tok):
    """What lm-evaluation-harness's local-completions client sends to score a continuation."""
    prompt_ids = tok(PROMPT).input_ids
    answer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, echo=True,
                                       logprobs=0)
    logprobs = answer.choices[0].logprobs
    assert answer.choices[0].text.startswith(PROMPT)
    assert logprobs.token_logprobs[0] is None and len(logprobs.tokens) == len(prompt_ids) + 1
    table = log_softmax(reference, prompt_ids)
    for j in range(1, len(prompt_ids)):
        assert logprobs.token_logprobs[j] == pytest.approx(float(table[j - 1, prompt_ids[j]]), abs=1e-4)
    assert "".join(logprobs.tokens[: len(prompt_ids)]) == PROMPT


def test_a_stop_string_split_over_two_tokens_still_stops(client, reference, tok):
    prompt_ids = tok(PROMPT).input_ids
    ids = greedy_ids(reference, tok, prompt_ids, 16)
    pieces = [piece(tok, t) for t in ids]
    k = next(i for i in range(1, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2
             and pieces[i].isprintable() and pieces[i + 1].isprintable())
    stop = pieces[k][-2:] + pieces[k + 1][:2]  # two tokens' worth: no single token holds it
    full = "".join(pieces)
    expected = full[: full.index(stop)]
    answer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop])
    assert answer.choices[0].text == expected and answer.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == expected


def test_stream_options_include_usage_in_every_mode(client):
    plain = client.completions.create(model=MODEL, prompt=[PROMPT, "Hello"], max_tokens=5, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=[PROMPT, "Hello"], max_tokens=5, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(chunk.usage is None for chunk in chunks[:-1])
    by_choice = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            by_choice[choice.index] += choice.text
    assert [by_choice[0], by_choice[1]] == [c.text for c in plain.choices]
    chat = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                               stream=True, stream_options={"include_usage": True}))
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0)
    assert chat[-1].usage.model_dump() == whole.usage.model_dump()


def test_max_completion_tokens_caps_the_answer(client):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=3, temperature=0)
    assert answer.usage.completion_tokens <= 3
    longer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=12, temperature=0)
    assert longer.choices[0].message.content.startswith(answer.choices[0].message.content)


def test_prompts_as_a_list_of_strings_and_as_token_ids(client, tok):
    prompts = [PROMPT, "Hello world"]
    batch = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0)
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0) for p in prompts]
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == [a.choices[0].text for a in alone]
    assert batch.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    as_ids = client.completions.create(model=MODEL, prompt=tok(PROMPT).input_ids, max_tokens=6, temperature=0)
    assert as_ids.choices[0].text == alone[0].choices[0].text
    many_ids = client.completions.create(model=MODEL, prompt=[tok(p).input_ids for p in prompts], max_tokens=6,
                                         temperature=0)
    assert [c.text for c in many_ids.choices] == [c.text for c in batch.choices]


def test_unsupported_options_are_a_400_that_names_them(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, presence_penalty=0.5, best_of=2)
    assert "presence_penalty" in str(error.value) and "best_of" in str(error.value)
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, response_format={"type": "json_object"})
    assert "response_format" in str(error.value)
    with pytest.raises(openai.BadRequestError, match="logprobs with stream: true is not supported"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, logprobs=True, stream=True)
