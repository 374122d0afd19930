"""09's chat layer: the template, the assistant mask, the mixture's held-out guarantee, scoring, the release."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import assistant, chat, classification
from helpers.settings import get_settings, make_settings
from helpers.training import causal_lm_loss, labelled_lm_loss
from tests.notebook_code import notebook_definitions

NB09 = notebook_definitions("09_assistant.ipynb")  # the lesson code 09 writes in its cells

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": chat.SENTIMENT_PROMPT.format(text="A quietly moving film.")},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": chat.FIRST_WORD_PROMPT.format(text="To be, or not to be")},
    {"role": "assistant", "content": "To"},
]


@pytest.fixture(scope="module")
def chat_tok(tokenizer):
    return chat.chat_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def texts():
    return chat.author_texts(get_settings())


@pytest.fixture(scope="module")
def mixture(texts):
    return chat.build_mixture(get_settings(), texts)


def _mask_by_walking(ids, tokenizer):
    """The notebook's hand mask: from the token after ``<|assistant|>\\n`` to ``<|end|>`` inclusive."""
    start, end = tokenizer.convert_tokens_to_ids([chat.ASSISTANT, chat.END])
    newline = tokenizer("\n").input_ids[0]
    mask, inside = [], False
    for i, token in enumerate(ids):
        inside = inside or (i >= 2 and ids[i - 2] == start and ids[i - 1] == newline)
        mask.append(int(inside))
        inside = inside and token != end
    return mask


def test_template_renders_each_turn_as_written_by_hand(chat_tok):
    by_hand = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>" for m in CONVERSATION)
    assert chat_tok.apply_chat_template(CONVERSATION, tokenize=False) == by_hand
    prompt = chat_tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|end|><|assistant|>\n")


def test_turn_tokens_are_single_ids_and_replies_end_at_end(tokenizer, chat_tok):
    for token in chat.TURN_TOKENS:
        assert chat_tok(token).input_ids == [chat_tok.convert_tokens_to_ids(token)]
        assert len(tokenizer(token).input_ids) > 1  # the caller's tokenizer is unchanged
    assert chat_tok.eos_token == chat.END and chat_tok.pad_token == tokenizer.eos_token


def test_an_unknown_role_is_refused(chat_tok):
    with pytest.raises(Exception, match="role must be system, user or assistant"):
        chat_tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_mask_by_hand_equals_transformers_assistant_mask(chat_tok, mixture):
    for conversation in [CONVERSATION, *mixture.conversations]:
        ids, labels = chat.encode_chat(chat_tok, conversation)
        theirs = chat_tok.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)["assistant_masks"]
        assert _mask_by_walking(ids, chat_tok) == list(theirs) == [int(label != -100) for label in labels]
    assert "multi_turn" in mixture.families and "identity" in mixture.families


def test_labels_are_the_assistant_tokens_exactly(chat_tok):
    ids, labels = chat.encode_chat(chat_tok, CONVERSATION)
    learned = chat_tok.decode([t for t in labels if t != -100])
    assert learned == "positive<|end|>To<|end|>"


def test_packing_never_splits_a_conversation(chat_tok, mixture):
    encoded = [chat.encode_chat(chat_tok, c) for c in mixture.conversations[:60]]
    blocks, labels, dropped = chat.pack_conversations(encoded, 64, chat_tok.pad_token_id)
    assert blocks.shape == labels.shape and blocks.shape[1] == 64
    assert np.all(labels[blocks == chat_tok.pad_token_id] == -100)
    starts = (blocks == chat_tok.convert_tokens_to_ids(chat.USER)) | (blocks == chat_tok.convert_tokens_to_ids(chat.SYSTEM))
    assert np.all(starts[:, 0])  # every block begins with a conversation's first turn
    fitting = [e for e in encoded if len(e[0]) <= 64]
    assert len(fitting) + dropped == len(encoded)
    assert (labels != -100).sum() == sum(sum(label != -100 for label in e[1]) for e in fitting)


def test_no_held_out_document_in_the_mixture(texts, mixture):
    held_out = list(texts["test"].values())
    assert set(texts["test"]) == {"shakespeare/hamlet", "austen/persuasion"}
    sources = {item.source for found in mixture.items.values() for item in found}
    assert not sources & set(texts["test"]) and "train" in sources
    test_sentences = {i.prompt for i in chat.instruction_items("test", 10**9, get_settings(), texts)["sentiment"]}
    contents = {m["content"] for c in mixture.conversations for m in c}
    assert test_sentences and not test_sentences & contents
    for family in ("authorship", "first_word"):
        for item in mixture.items[family]:
            assert not any(item.prompt.split("\n\n", 1)[1] in text for text in held_out)


def test_test_items_come_from_the_held_out_documents(texts):
    test = chat.instruction_items("test", 20, get_settings(), texts)
    assert {i.source for i in test["authorship"]} == {"shakespeare/hamlet", "austen/persuasion"}
    assert all(i.answer in i.choices for found in test.values() for i in found)
    assert {i.answer for i in test["authorship"]} == set(chat.AUTHORS)


def test_new_rows_start_at_the_mean_and_the_head_stays_tied(random_gpt2, chat_tok):
    model = random_gpt2()
    mean = model.get_input_embeddings().weight.detach().mean(0)
    assert chat.add_turn_tokens(model, chat_tok) == 4
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(chat_tok) and model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()
    assert torch.allclose(weight[-4:], mean.expand(4, -1))
    assert model.generation_config.eos_token_id == chat_tok.convert_tokens_to_ids(chat.END)


def test_the_chat_model_trains_with_the_dropout_its_settings_name():
    """Every dropout layer and the saved config carry ``sft_dropout``; eval mode still turns them off."""
    for rate in (0.0, 0.25):
        model, _, _ = assistant.chat_model(dataclasses.replace(get_settings(), sft_dropout=rate))
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert layers and all(m.p == rate for m in layers)
        assert model.config.embd_pdrop == model.config.attn_pdrop == model.config.resid_pdrop == rate


def test_loss_with_labels_is_transformers_loss(random_gpt2, chat_tok):
    model = random_gpt2()
    chat.add_turn_tokens(model, chat_tok)
    ids, labels = chat.encode_chat(chat_tok, CONVERSATION)
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    logits = model(ids).logits
    assert torch.allclose(causal_lm_loss(logits, ids, labels), model(ids, labels=labels).loss, atol=1e-6)


def test_the_head_only_where_labels_are_gives_transformers_loss_and_gradients(random_gpt2, chat_tok):
    ids, labels = zip(*(chat.encode_chat(chat_tok, c) for c in (CONVERSATION, CONVERSATION[:3])), strict=True)
    width = max(map(len, ids))
    ids = torch.tensor([list(i) + [chat_tok.pad_token_id] * (width - len(i)) for i in ids])
    labels = torch.tensor([list(label) + [-100] * (width - len(label)) for label in labels])
    ours, theirs = random_gpt2(), random_gpt2()
    for model in (ours, theirs):
        chat.add_turn_tokens(model, chat_tok)
    mine, reference = labelled_lm_loss(ours, ids, labels), theirs(ids, labels=labels).loss
    mine.backward()
    reference.backward()
    assert torch.allclose(mine, reference, atol=1e-6)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    with pytest.raises(ValueError, match="no position of this batch has a label"):
        labelled_lm_loss(ours, ids, torch.full_like(labels, -100))


def test_answer_logprobs_equal_transformers_loss(random_gpt2, tokenizer):
    """Contexts of different lengths share their cache with options of different lengths; one is cut to fit."""
    model = random_gpt2(n_positions=24)
    context = "Is this review positive or negative?\n\nDull.\nAnswer:"
    contexts = [context, context + " no", "A much longer context, " * 4 + context]
    options = [[" negative", " William Shakespeare"], [" negative"], [" Jane Austen", " no", " Mary Shelley's Frankenstein"]]
    assert len(tokenizer(contexts[2]).input_ids) > 24  # the model sees only its newest tokens
    got = assistant.answer_logprobs(model, tokenizer, contexts, options, batch_size=2)
    for row, text, answers in zip(got, contexts, options, strict=True):
        keep = 24 - max(len(tokenizer(a).input_ids) for a in answers)
        for score, answer in zip(row, answers, strict=True):
            c_ids, a_ids = tokenizer(text).input_ids[-keep:], tokenizer(answer).input_ids
            ids = torch.tensor([c_ids + a_ids])
            labels = torch.tensor([[-100] * len(c_ids) + a_ids])
            assert score == pytest.approx(-model(ids, labels=labels).loss.item() * len(a_ids), abs=1e-4)


def test_accuracy_interval_brackets_the_accuracy_and_narrows_with_items():
    few = classification.accuracy_interval([True, False] * 20)
    many = classification.accuracy_interval([True, False] * 400)
    assert few.point == many.point == 0.5
    assert few.low < 0.5 < few.high and many.high - many.low < few.high - few.low
    assert classification.accuracy_interval([True] * 10) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        classification.accuracy_interval([])


def test_release_round_trip(tmp_path, random_gpt2, chat_tok):
    settings = make_settings("smoke", artifacts_dir=tmp_path)
    model = random_gpt2(n_positions=128)
    chat.add_turn_tokens(model, chat_tok)
    folder = assistant.export_assistant(model, chat_tok, settings, "tiny")
    assert folder == tmp_path / "models" / "assistant"
    reloaded, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert torch.equal(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == chat_tok.apply_chat_template(
        CONVERSATION, tokenize=False)
    assert tokenizer.eos_token == chat.END and reloaded.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = assistant.chat_prompt(tokenizer, chat.Item("sentiment", CONVERSATION[1]["content"], "positive",
                                                        ("negative", "positive"), "test"))
    (reply,) = NB09["generate_replies"](reloaded, tokenizer, [prompt], max_new_tokens=3)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    greedy = reloaded.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1] :].tolist()  # transformers' own
    end = tokenizer.convert_tokens_to_ids(chat.END)
    assert reply == tokenizer.decode(greedy[: greedy.index(end)] if end in greedy else greedy, skip_special_tokens=True).strip()
    assert json.loads((folder / "release.json").read_text())["training_info"]["mode"] == "smoke"
    assert assistant.ensure_assistant_release(settings) == folder  # present and of this mode: not rebuilt
