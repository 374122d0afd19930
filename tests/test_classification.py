"""08's sentiment classifier: the data files and their split, the head, training and the release.

The data tests read the files shipped in ``data/raw/sentiment/`` (2.7 MB, read in a second);
the model tests use the tiny random GPT-2 of ``tests/conftest.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.calibration import calibration_curve
from transformers import GPT2Config, GPT2ForSequenceClassification

from helpers import classification
from helpers.classification import (
    CANDIDATES,
    DOMAINS,
    EOS_ID,
    LABELS,
    Example,
    SentimentDataError,
    accuracy_interval,
    check_checksums,
    classifier_loss,
    duplicate_groups,
    encode,
    ensure_sentiment_release,
    export_classifier,
    label_counts,
    label_of,
    last_token_index,
    make_trainable,
    predict,
    read_ratings,
    release_ok,
    sentiment_dir,
    sentiment_splits,
    train_classifier,
    trainable_parameters,
)
from helpers.deployment import ReportMismatchError
from helpers.evaluation import weights_sha256
from helpers.lora import DEFAULT_R, LoRALayer, lora_parameter_count, wrapped_shapes
from helpers.settings import get_settings
from tests.notebook_code import notebook_definitions

# --------------------------------------------------------------------------- the data


def test_collected_files_match_their_checksums():
    folder = sentiment_dir()
    listed = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sorted(listed) == sorted(DOMAINS.values())
    for name, expected in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == expected
    check_checksums(folder)


def test_the_collect_tool_pins_the_same_files():
    from tools import collect_data

    assert sorted(collect_data.SENTIMENT_FILES) == sorted(DOMAINS.values())
    assert sentiment_dir() == collect_data.SENTIMENT


def test_no_sentence_is_in_two_splits():
    splits = sentiment_splits()
    owner: dict[str, str] = {}
    for name in ("train", "validation", "test"):
        for example in splits[name]:
            key = " ".join(classification._normalized_words(example.text))
            assert owner.setdefault(key, name) == name, f"{example.text!r} is in {owner[key]} and {name}"


def test_near_duplicates_share_a_group():
    texts = ["...a pretentious mess...", "A pretentious mess.", "A small movie with a big heart.",
             "A small movie with a big heart , truly.", "A small movie with a big impact."]
    groups = duplicate_groups(texts)
    assert groups[0] == groups[1]
    assert groups[2] == groups[3]
    assert groups[4] != groups[2] and groups[0] != groups[2]


def test_splits_are_fixed_and_labels_follow_the_mean_rating():
    first, second = sentiment_splits(), sentiment_splits()
    assert first == second
    counts = label_counts()
    for row in counts.values():
        assert row["rows"] == row["ambiguous"] + row["negative"] + row["positive"]
    movies = sum(len(first[name]) for name in ("train", "validation", "test"))
    assert movies == counts["movies"]["negative"] + counts["movies"]["positive"]
    assert counts["movies"]["rows"] == 10_605  # the size the package's README states
    for examples in first.values():
        assert all(isinstance(e, Example) and abs(e.rating) >= 1 and e.label == int(e.rating > 0) for e in examples)
    assert [label_of(r) for r in (-1.0, -0.99, 0.0, 0.99, 1.0)] == [0, None, None, None, 1]
    assert LABELS[1] == "positive"


def test_a_changed_data_file_is_named(tmp_path):
    folder = tmp_path / "raw" / "sentiment"
    shutil.copytree(sentiment_dir(), folder)
    path = folder / DOMAINS["tweets"]
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))  # an editor that "fixed" the line ends
    settings = dataclasses.replace(get_settings(), data_dir=tmp_path)
    with pytest.raises(SentimentDataError, match="tweets_GroundTruth.txt has SHA-256"):
        sentiment_splits(settings)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="collect_data"):
        sentiment_splits(settings)


@pytest.mark.parametrize(("line", "problem"), [
    ("1\t2.5", "expected 3 tab-separated fields"),
    ("1\tgood\tA fine film.", "'good' is not a number"),
    ("1\t7.0\tA fine film.", "outside -4..4"),
    ("1\t2.0\t  ", "the text is empty"),
])
def test_a_bad_line_is_named(tmp_path, line, problem):
    path = tmp_path / "bad_GroundTruth.txt"
    path.write_text(f"0\t1.5\tA good line first.\r\n{line}\r\n")
    with pytest.raises(SentimentDataError, match=f"bad_GroundTruth.txt line 2: .*{problem}"):
        read_ratings(path)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin_GroundTruth.txt"
    path.write_bytes("1\t2.0\tcaf\u00e9\n".encode("latin-1"))
    with pytest.raises(SentimentDataError, match="latin_GroundTruth.txt is not UTF-8"):
        read_ratings(path)


# --------------------------------------------------------------------------- scores


def test_accuracy_interval_is_the_mean_with_a_bootstrap_around_it():
    flags = np.array([1] * 70 + [0] * 30)
    point, low, high = accuracy_interval(flags, seed=3)
    assert point == pytest.approx(0.7) and low < point < high
    # the normal approximation for a proportion: half-width 1.96 * sqrt(p (1 - p) / n) = 0.0898
    assert (high - low) / 2 == pytest.approx(1.96 * math.sqrt(0.7 * 0.3 / 100), abs=0.015)
    assert accuracy_interval(flags, seed=3) == accuracy_interval(flags, seed=3)
    with pytest.raises(ValueError, match="at least 2"):
        accuracy_interval([1])
    with pytest.raises(ValueError, match="confidence"):
        accuracy_interval(flags, confidence=95)


def test_calibration_bins_and_ece_by_hand():
    calibration_bins = notebook_definitions("08_sentiment.ipynb")["calibration_bins"]
    confidence = np.array([0.55, 0.58, 0.95, 0.92, 0.97, 0.91])
    correct = np.array([1, 0, 1, 1, 1, 0])
    ece, bins = calibration_bins(confidence, correct, num_bins=10)
    # bin 5: mean confidence 0.565, accuracy 0.5; bin 9: mean confidence 0.9375, accuracy 0.75
    assert bins == [(pytest.approx(0.565), 0.5, 2), (pytest.approx(0.9375), 0.75, 4)]
    assert ece == pytest.approx(2 / 6 * 0.065 + 4 / 6 * 0.1875)
    assert calibration_bins(np.array([1.0, 1.0]), [True, True])[0] == 0.0  # confidence 1.0 falls in the last bin


def test_calibration_bins_match_scikit_learn():
    calibration_bins = notebook_definitions("08_sentiment.ipynb")["calibration_bins"]
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 500)
    correct = rng.uniform(size=500) < confidence
    _, bins = calibration_bins(confidence, correct == 1, num_bins=10)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b[1] for b in bins], accuracy)
    np.testing.assert_allclose([b[0] for b in bins], mean_confidence)


def _classifier_from(lm, num_labels: int = 2):
    """transformers' GPT2ForSequenceClassification with ``lm``'s transformer and a random head."""
    config = GPT2Config.from_dict({**lm.config.to_dict(), "num_labels": num_labels, "pad_token_id": EOS_ID,
                                   "id2label": dict(enumerate(LABELS)), "label2id": {v: k for k, v in enumerate(LABELS)}})
    model = GPT2ForSequenceClassification(config).eval()
    model.transformer.load_state_dict(lm.transformer.state_dict())
    return model


SENTENCES = ["A gorgeous, witty film.", "Dull.", "The plot is thin, but the actors make it worth seeing."]


def test_the_notebooks_head_equals_gpt2_for_sequence_classification(random_gpt2, tokenizer):
    classify = notebook_definitions("08_sentiment.ipynb")["classify"]
    reference = _classifier_from(random_gpt2())
    batch = encode(tokenizer, SENTENCES, max_tokens=32)
    assert batch["attention_mask"][:, -1].tolist() == [0, 0, 1]  # right-padded: the longest row has no pad
    with torch.no_grad():
        mine = classify(reference.transformer, reference.score, batch["input_ids"], batch["attention_mask"])
        theirs = reference(**batch).logits
    torch.testing.assert_close(mine, theirs)
    labels = torch.tensor([1, 0, 1])
    torch.testing.assert_close(classifier_loss(reference, batch, labels), reference(**batch, labels=labels).loss)


def test_the_regression_head_uses_transformers_mse(random_gpt2, tokenizer):
    reference = _classifier_from(random_gpt2(), num_labels=1)
    reference.config.problem_type = "regression"
    batch = encode(tokenizer, SENTENCES, max_tokens=32)
    ratings = torch.tensor([2.5, -1.5, 1.25])
    torch.testing.assert_close(classifier_loss(reference, batch, ratings), reference(**batch, labels=ratings).loss)


def test_encode_pads_on_the_right_like_the_tokenizer_would(tokenizer):
    batch = encode(tokenizer, SENTENCES, max_tokens=32)
    reference = dict(tokenizer(SENTENCES))
    for i, ids in enumerate(reference["input_ids"]):
        assert batch["input_ids"][i, : len(ids)].tolist() == ids and batch["attention_mask"][i].sum() == len(ids)
        assert (batch["input_ids"][i, len(ids):] == EOS_ID).all()
    assert encode(tokenizer, SENTENCES, max_tokens=4)["input_ids"].shape == (3, 4)
    assert tokenizer.pad_token is None  # the shared tokenizer is left as it was
    with pytest.raises(ValueError, match="at least one token"):
        encode(tokenizer, ["A film.", ""], max_tokens=8)


def test_last_token_index_and_its_errors():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match=r"\(batch, tokens\)"):
        last_token_index(torch.tensor([1, 1]))


def test_what_to_train_counts_the_right_numbers(random_gpt2):
    lm = random_gpt2()
    n_embd = lm.config.n_embd
    counts = {what: trainable_parameters(make_trainable(_classifier_from(lm), what)) for what in CANDIDATES}
    last_block = sum(p.numel() for p in lm.transformer.h[-1].parameters()) + 2 * n_embd  # + ln_f's weight and bias
    assert counts["head only"] == n_embd * len(LABELS)
    assert counts["last block + head"] == last_block + n_embd * len(LABELS)
    assert counts["everything"] == sum(p.numel() for p in _classifier_from(lm).parameters())
    assert counts["LoRA"] == lora_parameter_count(wrapped_shapes(lm), DEFAULT_R) + n_embd * len(LABELS)
    with pytest.raises(ValueError, match="head only"):
        make_trainable(_classifier_from(lm), "the embeddings")


def test_training_moves_only_what_is_trainable(random_gpt2, tokenizer):
    model = make_trainable(_classifier_from(random_gpt2()), "head only")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    examples = sentiment_splits()["train"][:32]
    run = train_classifier(model, tokenizer, examples, num_steps=3, batch_size=8, lr=1e-2, max_tokens=32, progress=False)
    assert len(run.losses) == 3 and run.trainable == trainable_parameters(model) and run.seconds_per_step > 0
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"score.weight"}
    with pytest.raises(ValueError, match="batch_size in 1..32"):
        train_classifier(model, tokenizer, examples, num_steps=1, batch_size=33, lr=1e-2, max_tokens=32)


def test_merged_lora_computes_what_the_wrapped_model_computes(random_gpt2, tokenizer):
    model = make_trainable(_classifier_from(random_gpt2()), "LoRA")
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALayer):
                module.B.normal_(0, 0.1)  # B starts at zero: give the update something to merge
    merged = classification._merge_lora_layers(model)
    assert not any(isinstance(m, LoRALayer) for m in merged.modules())
    batch = encode(tokenizer, SENTENCES, max_tokens=32)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- the release


def test_the_release_loads_with_auto_model_for_sequence_classification(random_gpt2, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = _classifier_from(random_gpt2(n_positions=128))
    report = {"movie test accuracy": 0.8125, "model_sha256": weights_sha256(model)}
    out = export_classifier(model, tokenizer, tmp_path / "sentiment", report)
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(loaded).__name__ == "GPT2ForSequenceClassification"
    assert loaded.config.id2label == dict(enumerate(LABELS)) and loaded.config.label2id == {"negative": 0, "positive": 1}
    texts = SENTENCES
    torch.testing.assert_close(torch.as_tensor(predict(loaded, AutoTokenizer.from_pretrained(out), texts, 32)),
                               torch.as_tensor(predict(model, tokenizer, texts, 32)))
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "| movie test accuracy | 0.8125 |" in card
    assert "AutoModelForSequenceClassification" in card and release_ok(out)


def test_export_refuses_a_report_measured_on_other_weights(random_gpt2, tokenizer, tmp_path):
    model = _classifier_from(random_gpt2(n_positions=128))
    stale = {"movie test accuracy": 0.8125, "model_sha256": weights_sha256(model)}
    with torch.no_grad():
        model.score.weight.add_(1.0)  # trained further after it was scored
    with pytest.raises(ReportMismatchError, match="other weights"):
        export_classifier(model, tokenizer, tmp_path / "sentiment", stale)
    assert not release_ok(tmp_path / "sentiment")


def test_export_refuses_a_model_without_the_labels(random_gpt2, tokenizer, tmp_path):
    model = GPT2ForSequenceClassification(GPT2Config(**{**random_gpt2().config.to_dict(), "num_labels": 2}))
    with pytest.raises(ValueError, match="label its outputs"):
        export_classifier(model, tokenizer, tmp_path / "sentiment")
    assert not release_ok(tmp_path / "sentiment")


def test_ensure_sentiment_release_rebuilds_when_missing_and_reuses_it(tmp_path):
    from transformers import AutoModelForSequenceClassification

    settings = dataclasses.replace(get_settings(), artifacts_dir=tmp_path)
    folder = ensure_sentiment_release(settings)
    assert folder == tmp_path / "models" / "sentiment" and release_ok(folder)
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.id2label == dict(enumerate(LABELS))
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_sentiment_release(settings) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights  # there: not rebuilt
    assert "validation accuracy" in (folder / "README.md").read_text()
    other_mode = "cpu" if settings.mode != "cpu" else "smoke"  # a release made in one mode never stands in for another
    assert release_ok(folder, settings.mode) and not release_ok(folder, other_mode)
    (folder / "release.json").write_text("{ cut off by a crash")  # an unreadable manifest: not a complete release
    assert not release_ok(folder) and not release_ok(folder, settings.mode)


# --------------------------------------------------------------------------- exercises


def test_the_exercise_checks_pass_right_answers_and_hint_at_wrong_ones(capsys):
    from sklearn.metrics import confusion_matrix

    from helpers import exercises

    mask = torch.tensor(exercises.LAST_TOKEN_EXERCISE)
    exercises.check_last_token_index(mask.sum(1) - 1)
    exercises.check_last_token_index(mask.sum(1))
    case = exercises.CONFUSION_EXERCISE
    right = confusion_matrix(case["labels"], case["predictions"])
    exercises.check_confusion_matrix(right)
    exercises.check_confusion_matrix(right.T)
    acc = exercises.ACCURACY_EXERCISE
    correct = np.array(acc["labels"]) == np.array(acc["predictions"])
    exercises.check_accuracy_interval((correct.mean(), *accuracy_interval(correct, seed=5)[1:]))
    exercises.check_accuracy_interval((correct.mean() + 0.1, 0.0, 1.0))
    exercises.check_regression_head(lambda h, m, w, y: F.mse_loss((h[torch.arange(len(h)), m.sum(1) - 1] @ w.T)[:, 0], y))
    exercises.check_regression_head(lambda h, m, w, y: F.mse_loss((h[:, -1] @ w.T)[:, 0], y))  # the pad position
    exercises.check_regression_head(None)
    lines = capsys.readouterr().out.splitlines()
    verdicts = [line.split(":")[0] for line in lines if not line.startswith("✅ correct: its 95")]
    assert verdicts == ["✅ correct", "❌ not yet", "✅ correct", "❌ not yet", "✅ correct", "❌ not yet",
                        "✅ correct", "❌ not yet", "⏳ not done yet"], lines
