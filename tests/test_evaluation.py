"""evaluation: perplexity against transformers' own loss, 07's written-out loop and bootstrap, per-word and
per-byte perplexity, decoding, probes, report.

The loop, the bootstrap and the tokenizer-free metrics 07 writes in its cells are loaded from the notebook
(``tests/notebook_code.py``) and compared with the helpers and with references written here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import evaluation as ev
from tests.notebook_code import notebook_definitions

NB = notebook_definitions("07_evaluation.ipynb")  # the lesson code 07 writes in its cells

PASSAGE = (
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
    "The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles "
    "And by opposing end them. To die, to sleep, No more; and by a sleep to say we end "
    "The heart-ache and the thousand natural shocks That flesh is heir to."
)


@pytest.fixture(scope="module")
def model(random_gpt2):
    # conftest's tiny shape (64 positions: long-text code paths run with few tokens), with weights wider than
    # GPT-2's 0.02: per-token losses spread ~1 nat, so a wrong average shows
    return random_gpt2(initializer_range=0.2)


@pytest.fixture(scope="module")
def ids(tokenizer):
    tokens = torch.tensor(tokenizer(PASSAGE).input_ids)
    assert len(tokens) > 64  # longer than the model's context
    return tokens


def hf_window_nll(model, window: torch.Tensor, num_scored: int) -> tuple[float, int]:
    """Reference: transformers' own loss on one window, context labels masked, times the scored count."""
    labels = window.clone()
    labels[: len(window) - num_scored] = -100
    count = int((labels[1:] != -100).sum())
    with torch.no_grad():
        loss = model(window[None], labels=labels[None]).loss.item()
    return loss * count, count


# ---------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_tokens, context_len, stride",
    [(10, 4, 1), (10, 4, 3), (10, 4, 4), (9, 4, 4), (100, 16, 5), (5, 64, 32), (2, 2, 1), (64, 64, 32)],
)
def test_window_spans_cover_each_token_exactly_once(num_tokens, context_len, stride):
    spans = ev.window_spans(num_tokens, context_len, stride)
    covered = [t for _, end, n in spans for t in range(end - n, end)]
    assert covered == list(range(num_tokens))
    for begin, end, n in spans:
        assert 0 < end - begin <= context_len and 0 < n <= end - begin
    assert [b for b, _, _ in spans] == list(range(0, stride * len(spans), stride))


@pytest.mark.parametrize(
    "args, message",
    [((10, 4, 0), "stride"), ((10, 4, 5), "stride"), ((10, 1, 1), "context_len"), ((1, 4, 2), "at least 2 tokens")],
)
def test_window_spans_bad_input_is_a_clear_error(args, message):
    with pytest.raises(ValueError, match=message):
        ev.window_spans(*args)


def test_one_window_equals_transformers_loss(model, ids):
    text = ids[:40]
    with torch.no_grad():
        reference = math.exp(model(text[None], labels=text[None]).loss.item())
    for context_len, stride in [(40, 20), (40, 40), (64, 7)]:
        result = ev.sliding_window_nll(model, text, context_len, stride)
        assert result.num_tokens == 39
        assert result.perplexity == pytest.approx(reference, rel=1e-5)


def test_naive_equals_blocks_scored_by_transformers(model, ids):
    context_len = 16
    nll, count = 0.0, 0
    for begin in range(0, len(ids), context_len):
        block = ids[begin : begin + context_len]
        block_nll, block_count = hf_window_nll(model, block, len(block))
        nll, count = nll + block_nll, count + block_count
    naive = ev.sliding_window_nll(model, ids, context_len, stride=context_len)  # the naive split
    assert naive.num_tokens == count == len(ids) - math.ceil(len(ids) / context_len)
    assert naive.nll_sum == pytest.approx(nll, rel=1e-5)
    same = ev.sliding_window_nll(model, ids, context_len, stride=context_len, batch_size=3)
    assert same.nll_sum == pytest.approx(naive.nll_sum, rel=1e-6) and same.num_tokens == naive.num_tokens
    one_left = ev.sliding_window_nll(model, ids[:17], context_len, stride=context_len)  # the last block is one token: nothing to score
    assert one_left.num_tokens == 15
    assert one_left.nll_sum == pytest.approx(hf_window_nll(model, ids[:16], 16)[0], rel=1e-5)


def test_stride_one_scores_every_token_with_its_full_context(model, ids):
    """Token by token, each with the context_len - 1 tokens before it: no window bookkeeping at all."""
    text, context_len = ids[:30], 8
    nll = 0.0
    for t in range(1, len(text)):
        window = text[max(0, t - context_len + 1) : t + 1]
        nll += hf_window_nll(model, window, 1)[0]
    result = ev.sliding_window_nll(model, text, context_len, stride=1, batch_size=5)
    assert result.num_tokens == len(text) - 1
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)


def test_mean_is_over_tokens_not_windows(model, ids):
    """Unequal windows (15, 5, ..., short last): the token-weighted mean differs from a mean over windows."""
    context_len, stride = 16, 5
    windows = [hf_window_nll(model, ids[b:e], n) for b, e, n in ev.window_spans(len(ids), context_len, stride)]
    counts = [count for _, count in windows]
    assert len(set(counts)) > 1, "the case needs windows with unequal scored counts"
    token_weighted = sum(nll for nll, _ in windows) / sum(counts)
    window_mean = float(np.mean([nll / count for nll, count in windows]))
    assert abs(token_weighted - window_mean) > 1e-2, "the case must tell the two averages apart"
    result = ev.sliding_window_nll(model, ids, context_len, stride)
    assert result.num_tokens == len(ids) - 1
    assert result.mean_nll == pytest.approx(token_weighted, rel=1e-5)
    assert ev.perplexity(model, ids, context_len, stride) == pytest.approx(math.exp(token_weighted), rel=1e-4)


def test_sliding_window_restores_training_mode(model, ids):
    model.train()
    try:
        ev.sliding_window_nll(model, ids[:20], 16, 8)
        assert model.training
    finally:
        model.eval()


def test_context_longer_than_the_model_is_a_clear_error(model, ids):
    with pytest.raises(ValueError, match="64 positions"):
        ev.sliding_window_nll(model, ids, context_len=128, stride=64)


def test_the_notebook_defines_the_lesson_code():
    for name in ["windowed_nll", "bootstrap_perplexity", "bootstrap_difference", "excludes_zero", "tokenizer_free",
                 "loss_by_context", "my_early_stop", "turned_up"]:
        assert callable(NB.get(name)), f"07 no longer defines {name}; update this test with the notebook"


@pytest.mark.parametrize("context_len, stride", [(16, 8), (16, 16), (16, 5), (64, 32), (64, 1)])
def test_the_notebooks_loop_equals_the_batched_helper(model, ids, context_len, stride):
    mine = NB["windowed_nll"](model, ids, context_len, stride)
    helper = ev.sliding_window_nll(model, ids, context_len, stride, batch_size=4)
    assert mine.num_tokens == helper.num_tokens
    assert mine.nll_sum == pytest.approx(helper.nll_sum, rel=1e-5)


def test_the_notebooks_loop_on_one_window_is_transformers_loss(model, ids):
    text = ids[:40]
    with torch.no_grad():
        reference = model(text[None], labels=text[None]).loss.item() * 39
    assert NB["windowed_nll"](model, text, 40, 20).nll_sum == pytest.approx(reference, rel=1e-5)


def test_the_notebooks_loss_by_context_is_transformers_loss_per_window(model, ids):
    nll = NB["loss_by_context"](model, ids[:60], 20)
    assert nll.shape == (3, 19)
    with torch.no_grad():
        for row, begin in enumerate(range(0, 60, 20)):
            window = ids[begin : begin + 20]
            assert nll[row].mean().item() == pytest.approx(model(window[None], labels=window[None]).loss.item(), rel=1e-5)


def test_document_nlls_scores_each_document_alone(model, ids):
    documents = {"a": ids[:30], "b": ids[30:70].tolist(), "c": ids[70:]}
    results = ev.document_nlls(model, documents, context_len=16, stride=8)
    assert list(results) == ["a", "b", "c"]
    for name, tokens in documents.items():
        assert results[name] == ev.sliding_window_nll(model, tokens, 16, 8)
    with pytest.raises(ValueError, match="'tiny'"):
        ev.document_nlls(model, {"tiny": ids[:1]}, context_len=16)


def test_chunk_tokens_splits_without_losing_tokens(ids):
    chunks = ev.chunk_tokens(ids, 20)
    assert list(chunks) == sorted(chunks)
    assert torch.equal(torch.cat(list(chunks.values())), ids)
    sizes = [len(c) for c in chunks.values()]
    assert all(size == 20 for size in sizes[:-1]) and 10 <= sizes[-1] < 30
    assert [len(c) for c in ev.chunk_tokens(list(range(45)), 20).values()] == [20, 25]  # tail of 5 joins
    assert [len(c) for c in ev.chunk_tokens(list(range(50)), 20).values()] == [20, 20, 10]  # tail of 10 stays
    with pytest.raises(ValueError, match="chunk_len"):
        ev.chunk_tokens(ids, 1)


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


def synthetic_results(num_documents: int, seed: int) -> dict[str, ev.NLLResult]:
    """Documents of 200..2000 tokens whose mean NLL is drawn around 4 nats."""
    rng = np.random.default_rng(seed)
    results = {}
    for i in range(num_documents):
        tokens = int(rng.integers(200, 2000))
        results[f"doc{i:03d}"] = ev.NLLResult(float(tokens * rng.normal(4.0, 0.3)), tokens)
    return results


def bootstrap(results, num_samples=2000, confidence=0.95, seed=0):
    return NB["bootstrap_perplexity"](results, num_samples, confidence, seed)


def difference(a, b, num_samples=2000, confidence=0.95, seed=0, paired=True):
    return NB["bootstrap_difference"](a, b, num_samples, confidence, seed, paired=paired)


def test_bootstrap_point_is_token_weighted_not_a_mean_of_perplexities():
    results = {"long": ev.NLLResult(2.0 * 1000, 1000), "short": ev.NLLResult(6.0 * 10, 10)}
    point, low, high = bootstrap(results)
    assert point == pytest.approx(math.exp((2000 + 60) / 1010))
    assert point < 0.5 * np.mean([r.perplexity for r in results.values()])
    assert math.exp(2.0) <= low <= point <= high <= math.exp(6.0)


def test_bootstrap_interval_is_the_percentiles_of_replicates_recomputed_here():
    """numpy's percentile of replicates drawn with the same generator, written out one replicate at a time."""
    results = synthetic_results(7, seed=4)
    names = sorted(results)
    rng = np.random.default_rng(11)
    draws = rng.integers(0, len(names), size=(300, len(names)))
    replicates = [math.exp(sum(results[names[i]].nll_sum for i in row) / sum(results[names[i]].num_tokens for i in row))
                  for row in draws]
    point, low, high = bootstrap(results, num_samples=300, confidence=0.9, seed=11)
    assert (low, high) == pytest.approx(tuple(np.percentile(replicates, [5, 95])), rel=1e-12)


def test_bootstrap_interval_contains_the_point_and_shrinks_with_more_documents():
    """Averaged over ten draws of each: one draw of five documents can be narrow by luck."""
    widths = {}
    for num_documents in (5, 50):
        intervals = [bootstrap(synthetic_results(num_documents, seed), num_samples=500) for seed in range(10)]
        for interval in intervals:
            assert interval.low < interval.point < interval.high
        widths[num_documents] = np.mean([interval.high - interval.low for interval in intervals])
    assert widths[50] < 0.6 * widths[5]  # about 1 / sqrt(10) in theory
    assert bootstrap(synthetic_results(50, seed=1), seed=7) == bootstrap(synthetic_results(50, seed=1), seed=7)


def test_bootstrap_needs_two_documents():
    with pytest.raises(ValueError, match="split the text"):
        bootstrap({"only": ev.NLLResult(10.0, 5)})


def test_difference_of_a_model_with_itself_is_exactly_zero_only_when_paired():
    results = synthetic_results(20, seed=2)
    same = difference(results, dict(results))
    assert same.difference == (0.0, 0.0, 0.0) and same.relative == (0.0, 0.0, 0.0)
    assert not NB["excludes_zero"](same.difference)
    unpaired = difference(results, dict(results), paired=False)
    assert unpaired.difference.point == 0.0 and unpaired.difference.low < 0 < unpaired.difference.high


def test_paired_difference_sees_a_small_consistent_improvement():
    """b is 2 % better on every document: a clear change although the documents themselves vary a lot."""
    a = synthetic_results(20, seed=3)
    b = {name: ev.NLLResult(r.nll_sum + r.num_tokens * math.log(0.98), r.num_tokens) for name, r in a.items()}
    paired = difference(a, b)
    assert paired.relative.point == pytest.approx(-0.02)
    assert paired.relative.low == pytest.approx(-0.02) and paired.relative.high == pytest.approx(-0.02)
    assert paired.difference.point == pytest.approx(bootstrap(b).point - bootstrap(a).point)
    assert NB["excludes_zero"](paired.difference) and NB["excludes_zero"](paired.relative)
    # Unpaired (as two separate intervals compare), the change is lost in the documents' own spread.
    assert bootstrap(b).high > bootstrap(a).low
    unpaired = difference(a, b, paired=False)
    assert not NB["excludes_zero"](unpaired.difference)
    width = NB["width"]
    assert width(paired.difference) < 0.2 * width(unpaired.difference)


def test_the_helpers_paired_bootstrap_is_the_notebooks_to_the_last_bit():
    """helpers.evaluation.paired_bootstrap (the gate of 11 decides with it) is 07's bootstrap_difference, hardened."""
    a, b = synthetic_results(15, seed=5), synthetic_results(15, seed=6)
    for seed, confidence in ((0, 0.95), (9, 0.8)):
        assert ev.paired_bootstrap(a, b, 700, confidence, seed) == difference(a, b, 700, confidence, seed)
    with pytest.raises(ValueError, match="split the text"):
        ev.paired_bootstrap({"only": ev.NLLResult(1.0, 2)}, {"only": ev.NLLResult(1.0, 2)})
    with pytest.raises(ValueError, match="doc000"):
        ev.paired_bootstrap(a, {k: v for k, v in a.items() if k != "doc000"})


def test_difference_needs_the_same_documents():
    a = synthetic_results(5, seed=0)
    b = dict(a)
    b.pop("doc000")
    with pytest.raises(ValueError, match="doc000"):
        difference(a, b)


# ---------------------------------------------------------------------------------------------
# Perplexity per word and per byte (lm-evaluation-harness's conventions)
# ---------------------------------------------------------------------------------------------


def test_the_notebooks_tokenizer_free_metrics_by_hand():
    texts = {"a": "To be, or not", "b": "Oph\u00e9lie  sings\n"}  # 'é' is 2 bytes; runs of whitespace
    results = {"a": ev.NLLResult(10.0, 5), "b": ev.NLLResult(6.0, 4)}
    # by hand: words a = 4; b = re.split gives ['Ophélie', 'sings', ''] = 3 (the harness counts the trailing piece)
    # bytes: a = 13; b = 8 + 2 + 5 + 1 = 16
    words, num_bytes, nll = 7, 29, 16.0
    metrics = NB["tokenizer_free"](results, texts)
    assert metrics["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-12)
    assert metrics["byte_perplexity"] == pytest.approx(math.exp(nll / num_bytes), rel=1e-12)
    assert metrics["bits_per_byte"] == pytest.approx(nll / num_bytes / math.log(2), rel=1e-12)
    assert metrics["token_perplexity"] == pytest.approx(math.exp(nll / 9), rel=1e-12)
    assert 2 ** metrics["bits_per_byte"] == pytest.approx(metrics["byte_perplexity"], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def test_distinct_n_and_repetition_rate_by_hand():
    tokens = [1, 2, 3, 4, 1, 2, 3, 4]
    assert ev.distinct_n(tokens, 1) == 4 / 8
    assert ev.distinct_n(tokens, 2) == 4 / 7  # 12 23 34 41 12 23 34
    assert ev.repetition_rate(tokens, 4) == 1 / 5  # 1234 2341 3412 4123 [1234]
    assert ev.repetition_rate(tokens, 2) == 3 / 7
    assert ev.distinct_n([7, 7, 7, 7], 1) == 1 / 4 and ev.repetition_rate([7, 7, 7, 7], 1) == 3 / 4
    assert ev.distinct_n([1, 2, 3], 1) == 1.0 and ev.repetition_rate([1, 2, 3, 4, 5], 4) == 0.0
    assert ev.distinct_n([1, 2], 3) == 0.0 and ev.repetition_rate([], 4) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        random_tokens = rng.integers(0, 4, size=30).tolist()
        assert ev.repetition_rate(random_tokens, 3) == pytest.approx(1 - ev.distinct_n(random_tokens, 3))
    with pytest.raises(ValueError, match="n must be"):
        ev.distinct_n(tokens, 0)


def test_every_strategy_gives_the_requested_tokens_reproducibly(model, tokenizer):
    prompts = ["To be, or not", "The king"]
    rows = ev.generate_samples(model, tokenizer, prompts, max_new_tokens=6, seed=11)
    assert [(r["strategy"], r["prompt"]) for r in rows] == [(s, p) for s in ev.DECODING_STRATEGIES for p in prompts]
    for row in rows:
        assert row["new_tokens"] == 6
        assert len(tokenizer(row["text"]).input_ids) >= 1
        assert 0 < row["distinct_1"] <= 1 and 0 <= row["repetition_rate"] < 1
    assert ev.generate_samples(model, tokenizer, prompts, max_new_tokens=6, seed=11) == rows
    # Greedy is the model's own greedy search.
    inputs = tokenizer(prompts[0], return_tensors="pt")
    greedy = model.generate(**inputs, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.eos_token_id)
    assert rows[0]["text"] == tokenizer.decode(greedy[0, inputs.input_ids.shape[1] :])


def test_sampling_depends_on_the_seed(model, tokenizer):
    strategies = {"temperature 1.2": ev.DECODING_STRATEGIES["temperature 1.2"]}
    texts = {
        ev.generate_samples(model, tokenizer, ["The"], strategies, max_new_tokens=8, seed=s)[0]["text"]
        for s in range(3)
    }
    assert len(texts) > 1


def test_generation_beyond_the_context_is_a_clear_error(model, tokenizer):
    with pytest.raises(ValueError, match="64 positions"):
        ev.generate_samples(model, tokenizer, ["The king"], {"greedy": {}}, max_new_tokens=64)
    with pytest.raises(TypeError, match="list of strings"):
        ev.generate_samples(model, tokenizer, "The king", max_new_tokens=4)


def test_samples_table_formats():
    rows = [
        dict(
            strategy=s,
            prompt=p,
            text=f"{s} says <{p}> | and\nmore",
            new_tokens=5,
            distinct_1=d,
            distinct_2=1.0,
            repetition_rate=0.0,
        )
        for s, d in [("greedy", 0.5), ("beam (4)", 0.25)]
        for p in ["A", "B"]
    ]
    markdown = ev.samples_table(rows).splitlines()
    assert len(markdown) == 2 + 2 and markdown[1].startswith("|---|")
    assert markdown[2].startswith("| greedy | greedy says <A> \\| and ⏎ more |") and "0.50" in markdown[2]
    page = ev.samples_table(rows, format="html")
    assert page.count("<tr>") == 3 and "&lt;A&gt;" in page and "<br>" in page
    text = ev.samples_table(rows, format="text", max_chars=10).splitlines()
    assert len(text) == 4 and "greedy sa…" in text[2]
    assert ev.summarize_samples(rows)[1]["distinct_1"] == 0.25
    with pytest.raises(ValueError, match="format"):
        ev.samples_table(rows, format="latex")


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------


def test_add_typos_is_seeded_and_swaps_letters():
    text = "the quick brown fox jumps over the lazy dog " * 5
    typos = NB["add_typos"](text, 0.2, seed=1)
    assert typos == NB["add_typos"](text, 0.2, seed=1) != text
    assert sorted(typos) == sorted(text) and len(typos) == len(text)
    assert NB["add_typos"](text, 0.0) == text


def test_robustness_rows_score_each_perturbation(model, tokenizer, ids):
    variants = NB["perturbed"](tokenizer, PASSAGE, 32, short_tokens=6)
    assert list(variants) == ["clean", "typos", "lower-case", "upper-case", "extra whitespace", "short prompt",
                              "context length"]
    rows = {row["perturbation"]: row for row in NB["robustness_rows"](model, tokenizer, variants, 32)}
    clean = rows["clean"]
    assert clean["tokens"] == len(ids) and clean["perplexity_change"] == 0 and clean["bpc_change"] == 0
    assert rows["context length"]["tokens"] == 32 and rows["short prompt"]["tokens"] == 6
    assert rows["upper-case"]["tokens"] > clean["tokens"] and rows["extra whitespace"]["tokens"] > clean["tokens"]
    reference = ev.sliding_window_nll(model, ids, 32, 16)
    assert clean["characters"] == len(PASSAGE) - len(tokenizer.decode(ids[:1]))
    assert clean["perplexity"] == pytest.approx(reference.perplexity)
    assert clean["bits_per_char"] == pytest.approx(reference.nll_sum / math.log(2) / clean["characters"])
    for row in rows.values():
        assert row["perplexity_change"] == pytest.approx(row["perplexity"] / clean["perplexity"] - 1)
    with pytest.raises(AssertionError, match="'context length' row needs 32"):
        NB["perturbed"](tokenizer, "Too short.", 32)


def test_bias_rows_score_whole_sentences(model, tokenizer):
    templates = ["The {group} was a skilled physician.", "The {group} worked as a nurse."]
    rows = NB["bias_rows"](model, tokenizer, templates, ["he", "she"])
    assert [(r["template"], r["group"]) for r in rows] == [(t, g) for t in templates for g in ["he", "she"]]
    for row in rows:  # the reference: transformers' own loss over every token after end-of-text
        ids = torch.tensor([tokenizer.eos_token_id, *tokenizer(row["sentence"]).input_ids])
        with torch.no_grad():
            reference = -model(ids[None], labels=ids[None]).loss.item() * (len(ids) - 1)
        assert row["tokens"] == len(ids) - 1
        assert row["log_likelihood"] == pytest.approx(reference, rel=1e-5)
    assert rows[0]["difference"] == 0 and rows[1]["difference"] == pytest.approx(
        rows[1]["log_likelihood"] - rows[0]["log_likelihood"]
    )
    with pytest.raises(AssertionError, match="exactly one"):
        NB["bias_rows"](model, tokenizer, ["No placeholder here."], ["he", "she"])

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def test_weights_checksum_names_the_weights_not_their_dtype_or_object(model):
    import copy

    same = copy.deepcopy(model)
    assert ev.weights_sha256(same) == ev.weights_sha256(model)
    with torch.no_grad():
        same.transformer.h[0].attn.c_attn.bias[0] += 1e-6
    assert ev.weights_sha256(same) != ev.weights_sha256(model)


def test_report_round_trip(tmp_path):
    paired = ev.PairedDifference(ev.Interval(-3.0, -4.5, -1.25), ev.Interval(-0.1, -0.15, -0.05))
    report = {
        "model_sha256": "0" * 64,
        "settings": {"mode": "smoke", "context_len": 64, "seed": np.int64(3)},
        "perplexity": {"base": ev.Interval(30.0, 27.5, 33.0), "finetuned": ev.Interval(27.0, 25.0, 29.5)},
        "difference": {**paired._asdict(), "excludes_zero": True},
        "decoding": [{"strategy": "greedy", "distinct_1": 0.5}],
        "probes": {"robustness": {"rows": [], "caveats": "x"}},
    }
    path = ev.write_report(report, tmp_path / "eval" / "report.json")
    assert path == tmp_path / "eval" / "report.json"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left behind
    loaded = ev.load_report(path)
    assert loaded == json.loads(path.read_text())
    assert loaded["perplexity"]["base"] == dict(
        zip(("point", "low", "high"), report["perplexity"]["base"], strict=True)
    )
    assert loaded["difference"]["relative"]["point"] == paired.relative.point
    assert loaded["settings"]["seed"] == 3
    assert ev.default_report_path().parts[-2:] == ("eval", "report.json")


def test_report_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="difference"):
        ev.write_report({"settings": {}, "perplexity": {}, "decoding": [], "probes": {}}, tmp_path / "r.json")
    full = dict.fromkeys(ev.REPORT_KEYS, {})
    with pytest.raises(ValueError, match="JSON"):
        ev.write_report({**full, "perplexity": {"base": float("nan")}}, tmp_path / "r.json")
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="07_evaluation"):
        ev.load_report(tmp_path / "missing.json")
