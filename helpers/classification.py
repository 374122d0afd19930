"""Sentence classification (08): the human-rated sentiment data, the classification head, its release.

Introduced in ``08_sentiment.ipynb``; ``09_assistant.ipynb`` builds instructions from the
training split and ``10_deployment.ipynb`` serves the release. Read top to bottom:

1. the data: the four ``*_GroundTruth.txt`` files of Hutto & Gilbert (2014) in
   ``data/raw/sentiment/`` (``tools/collect_data.py`` made them), checked against their
   checksums; a label is the sign of the mean human rating, ``|mean| < 1`` is set aside as
   ambiguous; movie snippets are split with a fixed seed, near-duplicates kept together;
2. scores: accuracy with a bootstrap interval (08 writes its calibration bins in a cell);
3. the classifier: ``GPT2ForSequenceClassification`` on the mode's base (08 writes the head on the
   last real token by hand first, and a test proves the two equal), what to train, the loop;
4. the release at ``artifacts/models/sentiment/``, exported with 10's ``export_release`` and
   rebuilt by :func:`ensure_sentiment_release` when missing.
"""

from __future__ import annotations

import copy
import functools
import random
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from helpers.atomic import sha256_file
from helpers.deployment import check_report_matches, export_release, manifest_mode, read_manifest
from helpers.evaluation import Interval, weights_sha256
from helpers.lora import DEFAULT_ALPHA, DEFAULT_R, LORA_LR_FACTOR, LoRALayer, add_lora
from helpers.models import load_tokenizer, resolve_model_source, with_fused_gelu
from helpers.runtime import eval_mode, pick_device, progress_bar, set_seed
from helpers.settings import Settings, display_path, get_settings
from helpers.training import make_scheduler

LABELS = ("negative", "positive")
DOMAINS = {  # name: file in data/raw/sentiment/; movies is split, the rest are out-of-domain tests
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
CHECKSUMS_FILE = "SHA256SUMS"
RATING_RANGE = (-4.0, 4.0)  # raters chose -4 (extremely negative) ... +4 (extremely positive)
AMBIGUOUS_BELOW = 1.0  # |mean rating| under this: raters did not agree on a side
SPLIT_SEED = 2014  # fixed, not the mode's seed: every mode and 09 see the same test sentences
HELD_OUT_FRACTION = 0.1  # of the movie groups, for validation and again for test
NEAR_DUPLICATE_JACCARD = 0.8  # word-trigram overlap above which two sentences count as one
COLLECT_HINT = "re-create it with `python -m tools.collect_data --only sentiment`"
EOS_ID = 50256  # GPT-2's <|endoftext|>, also the pad token: the attention mask and the pooling skip it
RELEASE_DIR = "models/sentiment"  # under artifacts/


class SentimentDataError(ValueError):
    """A sentiment data file that cannot be used as it is: the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One rated sentence: its text, label (index into :data:`LABELS`) and mean human rating."""

    text: str
    label: int
    rating: float


def sentiment_dir(settings: Settings | None = None) -> Path:
    """``data/raw/sentiment/``, where ``tools/collect_data.py`` put the rated sentences (08)."""
    return (settings or get_settings()).data_dir / "raw" / "sentiment"


def check_checksums(folder: Path | str) -> None:
    """Raise unless every file listed in ``folder/SHA256SUMS`` is there with that SHA-256 (08).

    A changed file (an editor that rewrote the CRLF line ends, a truncated copy) is named,
    with both checksums, instead of training on it silently.
    """
    folder = Path(folder)
    listing = folder / CHECKSUMS_FILE
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} is missing; {COLLECT_HINT}")
    for line in listing.read_text().splitlines():
        expected, name = line.split(maxsplit=1)
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {COLLECT_HINT}")
        if (found := sha256_file(path)) != expected:
            raise SentimentDataError(f"{path} has SHA-256 {found}, not {expected} as {CHECKSUMS_FILE} says; "
                                     f"{COLLECT_HINT}")


def read_ratings(path: Path | str) -> list[tuple[str, float, str]]:
    """The ``(id, mean rating, text)`` rows of one ``*_GroundTruth.txt`` file (tab-separated) (08).

    A line without exactly three fields, a rating that is not a number in -4..4 or an empty
    text is a :class:`SentimentDataError` naming the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise SentimentDataError(f"{path} is not UTF-8 text (byte {error.start}); {COLLECT_HINT}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path.name} line {number}"
        if len(fields) != 3:
            raise SentimentDataError(f"{where}: expected 3 tab-separated fields (id, rating, text), "
                                     f"found {len(fields)}")
        try:
            rating = float(fields[1])
        except ValueError:
            raise SentimentDataError(f"{where}: the rating {fields[1]!r} is not a number") from None
        if not RATING_RANGE[0] <= rating <= RATING_RANGE[1]:
            low, high = RATING_RANGE
            raise SentimentDataError(f"{where}: the rating {rating} is outside {low:g}..{high:g}")
        if not fields[2].strip():
            raise SentimentDataError(f"{where}: the text is empty")
        rows.append((fields[0], rating, fields[2].strip()))
    return rows


def label_of(rating: float) -> int | None:
    """1 (positive) or 0 (negative) by the sign of the mean rating; ``None`` when ``|rating| < 1`` (08)."""
    if abs(rating) < AMBIGUOUS_BELOW:
        return None
    return int(rating > 0)


def _normalized_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def duplicate_groups(texts: list[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> list[int]:
    """A group id per text: equal once lower-cased without punctuation, or word-trigram Jaccard >= threshold (08).

    Sentences of one group go to one split, so a test sentence never has a copy in training.
    """
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    words = [_normalized_words(text) for text in texts]
    first_with_key: dict[str, int] = {}
    shingles = [set(zip(w, w[1:], w[2:])) for w in words]
    holders: dict[tuple, list[int]] = {}
    for i, (w, own) in enumerate(zip(words, shingles)):
        candidates = {first_with_key.setdefault(" ".join(w), i)}
        shared = Counter(j for shingle in own for j in holders.setdefault(shingle, []))
        candidates |= {j for j, common in shared.items() if common / len(own | shingles[j]) >= threshold}
        for shingle in own:
            holders[shingle].append(i)
        for j in candidates:
            parent[root(i)] = root(j)
    return [root(i) for i in range(len(texts))]


def _split_movies(examples: list[Example], seed: int = SPLIT_SEED) -> dict[str, list[Example]]:
    groups: dict[int, list[Example]] = {}
    for group, example in zip(duplicate_groups([e.text for e in examples]), examples):
        groups.setdefault(group, []).append(example)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    held_out = int(HELD_OUT_FRACTION * len(examples))
    splits: dict[str, list[Example]] = {"test": [], "validation": [], "train": []}
    for members in order:
        name = next((s for s in ("test", "validation") if len(splits[s]) < held_out), "train")
        splits[name].extend(members)
    return {"train": splits["train"], "validation": splits["validation"], "test": splits["test"]}


@functools.cache
def _load(folder: Path) -> tuple[dict[str, list[Example]], dict[str, dict[str, int]]]:
    check_checksums(folder)
    splits, counts = {}, {}
    for domain, name in DOMAINS.items():
        rows = read_ratings(folder / name)
        labelled = [Example(text, label, rating) for _, rating, text in rows if (label := label_of(rating)) is not None]
        counts[domain] = {"rows": len(rows), "ambiguous": len(rows) - len(labelled),
                          **{LABELS[k]: sum(e.label == k for e in labelled) for k in range(len(LABELS))}}
        splits.update(_split_movies(labelled) if domain == "movies" else {domain: labelled})
    return splits, counts


def sentiment_splits(settings: Settings | None = None) -> dict[str, list[Example]]:
    """The labelled sentences: ``train``/``validation``/``test`` (movies) and ``tweets``/``amazon``/``nyt`` (08).

    Introduced in ``08_sentiment.ipynb``; 09 builds instructions from ``train``. The files are
    checked against their checksums first; ambiguous ratings are left out
    (:func:`label_counts` says how many).
    """
    splits, _ = _load(sentiment_dir(settings).resolve())
    return {name: list(examples) for name, examples in splits.items()}


def label_counts(settings: Settings | None = None) -> dict[str, dict[str, int]]:
    """Per domain: rows in the file, ``ambiguous`` (set aside), ``negative`` and ``positive`` (08)."""
    _, counts = _load(sentiment_dir(settings).resolve())
    return {domain: dict(row) for domain, row in counts.items()}


# ---------------------------------------------------------------------------------------------
# 2. Scores with intervals
# ---------------------------------------------------------------------------------------------


def accuracy_interval(correct, num_samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy of 0/1 ``correct`` flags with a percentile bootstrap interval over the sentences (08).

    The bootstrap of ``07_evaluation.ipynb``, for a mean of flags: draw as many sentences as
    there are, with replacement, recompute the accuracy, keep the middle ``confidence`` share.
    """
    flags = np.asarray(correct, dtype=np.float64).ravel()
    if len(flags) < 2:
        raise ValueError(f"an interval needs at least 2 scored sentences, got {len(flags)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    index = np.random.default_rng(seed).integers(0, len(flags), size=(num_samples, len(flags)))
    low, high = np.percentile(flags[index].mean(axis=1), [50 * (1 - confidence), 50 * (1 + confidence)])
    return Interval(float(flags.mean()), float(low), float(high))


# ---------------------------------------------------------------------------------------------
# 3. The classifier: GPT-2 with a head on the last real token
# ---------------------------------------------------------------------------------------------

CANDIDATES = ("head only", "last block + head", "everything", "LoRA")
LR_FACTORS = {"head only": 10, "last block + head": 1, "everything": 1, "LoRA": LORA_LR_FACTOR}


def new_classifier(num_labels: int = len(LABELS), settings: Settings | None = None):
    """``GPT2ForSequenceClassification`` on the mode's base model: a new ``score`` head, fp32 (08).

    ``num_labels=2`` labels ``negative``/``positive`` (in the config's ``id2label``); ``num_labels=1``
    is the regression head (MSE on the mean rating). The pad token is GPT-2's end-of-text.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging

    source = resolve_model_source(settings)
    labels = dict(enumerate(LABELS)) if num_labels == len(LABELS) else {0: "rating"}
    config = with_fused_gelu(AutoConfig.from_pretrained(
        source.location, num_labels=num_labels, id2label=labels, label2id={v: k for k, v in labels.items()},
        pad_token_id=EOS_ID, problem_type="regression" if num_labels == 1 else "single_label_classification"))
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "score.weight newly initialized" is the point here, not a warning
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source.location, config=config, dtype=torch.float32)
    finally:
        logging.set_verbosity(verbosity)
    return model


def make_trainable(model, what: str):
    """Freeze ``model`` but for ``what``, one of :data:`CANDIDATES` (08's table); returns the model.

    ``LoRA`` wraps every block's projections with 06's :func:`helpers.lora.add_lora` (rank 8) and
    trains those and the head.
    """
    if what not in CANDIDATES:
        raise ValueError(f"what to train must be one of {', '.join(CANDIDATES)}; got {what!r}")
    model.requires_grad_(what == "everything")
    if what == "LoRA":
        add_lora(model, DEFAULT_R, DEFAULT_ALPHA)
    if what == "last block + head":
        model.transformer.h[-1].requires_grad_(True)
        model.transformer.ln_f.requires_grad_(True)
    model.score.requires_grad_(True)
    return model


def trainable_parameters(model) -> int:
    """How many numbers the optimizer updates (08's table)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def right_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id ``rows`` as one right-padded batch: ``(input_ids, attention_mask)`` (08's encoding, 09's scoring)."""
    input_ids = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def encode(tokenizer, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for ``texts``, cut at ``max_tokens`` (08).

    Pads with end-of-text (the classifier's ``pad_token_id``) whatever the tokenizer's own padding
    settings, and leaves the tokenizer as it was.
    """
    rows = tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("every text needs at least one token; drop empty texts first")
    input_ids, attention_mask = right_padded(rows, EOS_ID)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token in a right-padded batch: ``mask.sum(1) - 1`` (08)."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be (batch, tokens), got shape {tuple(attention_mask.shape)}")
    lengths = attention_mask.sum(dim=1)
    if (lengths == 0).any():
        raise ValueError("a row of the batch has no real token; drop empty texts first")
    return lengths - 1


def _targets(examples: Sequence[Example], regression: bool) -> torch.Tensor:
    if regression:
        return torch.tensor([e.rating for e in examples], dtype=torch.float32)
    return torch.tensor([e.label for e in examples])


def classifier_loss(model, batch: Mapping[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's logits at the last real token (MSE for a 1-output head) (08).

    The hardened twin of the step 08 writes out: the model pools itself
    (``GPT2ForSequenceClassification`` finds the last non-pad token), and a test proves both agree.
    """
    logits = model(**batch).logits  # (B, num_labels)
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), targets.float())
    return F.cross_entropy(logits, targets)


@dataclass
class ClassifierRun:
    """What :func:`train_classifier` measured: losses, seconds per step, trainable numbers."""

    losses: list[float]
    seconds_per_step: float
    trainable: int


def train_classifier(model, tokenizer, examples: Sequence[Example], num_steps: int, batch_size: int, lr: float,
                     max_tokens: int, seed: int = 0, progress: bool = True) -> ClassifierRun:
    """Train ``model``'s trainable parameters with AdamW on shuffled batches of ``examples`` (08).

    A 1-output head learns the mean rating (MSE), a 2-output head the label (cross-entropy).
    Warmup over the first 10 % of steps, then cosine; gradients clipped to norm 1.
    """
    if num_steps < 1 or not 1 <= batch_size <= len(examples):
        raise ValueError(f"num_steps must be positive and batch_size in 1..{len(examples)} (the examples), "
                         f"got {num_steps} and {batch_size}")
    set_seed(seed)
    regression = model.config.num_labels == 1
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = make_scheduler(optimizer, max(1, num_steps // 10), num_steps)
    order, losses, device = np.random.default_rng(seed), [], next(model.parameters()).device
    batches = _batches(len(examples), batch_size, order)
    model.train()
    start = time.perf_counter()
    for _ in progress_bar(range(num_steps), progress=progress, desc="training"):
        chosen = [examples[i] for i in next(batches)]
        batch = {k: v.to(device) for k, v in encode(tokenizer, [e.text for e in chosen], max_tokens).items()}
        loss = classifier_loss(model, batch, _targets(chosen, regression).to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = (time.perf_counter() - start) / num_steps
    model.eval()
    return ClassifierRun(losses, seconds, trainable_parameters(model))


def _batches(num_examples: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    while True:  # epoch after epoch, each in a new order
        order = rng.permutation(num_examples)
        for begin in range(0, num_examples - batch_size + 1, batch_size):
            yield order[begin: begin + batch_size]


@torch.no_grad()
def predict(model, tokenizer, texts: Sequence[str], max_tokens: int, batch_size: int = 64) -> np.ndarray:
    """The head's outputs for ``texts``, ``(N, num_labels)``, in eval mode (08)."""
    device, rows = next(model.parameters()).device, []
    with eval_mode(model):
        for begin in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[begin: begin + batch_size], max_tokens)
            rows.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(rows).numpy()


# ---------------------------------------------------------------------------------------------
# 4. The release (10 serves it)
# ---------------------------------------------------------------------------------------------


def sentiment_release_dir(settings: Settings | None = None) -> Path:
    """``artifacts/models/sentiment/``: 08's classifier, loaded by ``AutoModelForSequenceClassification``."""
    return (settings or get_settings()).artifacts_dir / RELEASE_DIR


def _merge_lora_layers(model):
    """A copy of ``model`` with every :class:`helpers.lora.LoRALayer` folded into its base projection."""
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoRALayer):
            with torch.no_grad():
                module.base.weight += (module.B @ module.A).T * module.scale  # Conv1D's W is (in, out)
            parent_name, child_name = name.rsplit(".", 1)
            setattr(merged.get_submodule(parent_name), child_name, module.base)
    return merged.requires_grad_(True)


def export_classifier(model, tokenizer, out_dir: Path | str, eval_report: Mapping | None = None,
                      training_info: Mapping | None = None) -> Path:
    """Write the classifier as a release folder with 10's :func:`helpers.deployment.export_release` (08).

    LoRA layers are merged first, so the folder is a plain ``GPT2ForSequenceClassification``;
    the config carries ``id2label``/``label2id``, the model card the measured accuracy. A report
    must name the weights it measured (``model_sha256``, :func:`helpers.evaluation.weights_sha256`
    of ``model``); the release records the merged weights' checksum in its place.
    """
    if getattr(model.config, "id2label", None) != dict(enumerate(LABELS)):
        raise ValueError(f"the classifier's config must label its outputs {dict(enumerate(LABELS))}, "
                         f"got {getattr(model.config, 'id2label', None)}; build it with new_classifier()")
    check_report_matches(eval_report, model)
    merged = _merge_lora_layers(model).cpu()
    if eval_report is not None:
        eval_report = {**eval_report, "model_sha256": weights_sha256(merged)}
    return export_release(merged, tokenizer, out_dir, eval_report, training_info)


def release_ok(folder: Path | str, mode: str | None = None) -> bool:
    """True when ``folder`` holds a complete classifier release with :data:`LABELS` (08, 09, 10),
    made in ``mode`` when one is given (a smoke-mode model must not stand in for a cpu-mode one)."""
    import json

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    manifest = read_manifest(folder)
    labels = {int(k): v for k, v in config.get("id2label", {}).items()}
    return manifest is not None and labels == dict(enumerate(LABELS)) and (mode is None or manifest_mode(manifest) == mode)


def ensure_sentiment_release(settings: Settings | None = None, progress: bool = False) -> Path:
    """The release at ``artifacts/models/sentiment/``, rebuilt when missing (fast in every mode).

    ``08_sentiment.ipynb`` writes the head and the step in its cells and exports its chosen
    classifier; 09 and 10 call this so that they also run alone. The rebuild fine-tunes
    ``everything`` for the mode's ``sentiment_steps`` and puts its validation and test accuracy
    on the model card.
    """
    settings = settings or get_settings()
    folder = sentiment_release_dir(settings)
    if release_ok(folder, settings.mode):
        return folder
    print(f"fine-tuning 08's classifier first: {display_path(folder, settings)} is missing or made in another mode")
    splits, tokenizer = sentiment_splits(settings), load_tokenizer(resolve_model_source(settings))
    model = make_trainable(new_classifier(settings=settings), "everything").to(pick_device())
    run = train_classifier(model, tokenizer, splits["train"], settings.sentiment_steps, settings.sentiment_batch_size,
                           settings.sentiment_lr, settings.sentiment_max_tokens, settings.seed, progress)
    report = {}
    for split in ("validation", "test"):
        examples = splits[split][: settings.sentiment_eval_examples]
        logits = predict(model, tokenizer, [e.text for e in examples], settings.sentiment_max_tokens)
        point, low, high = accuracy_interval(logits.argmax(1) == np.array([e.label for e in examples]))
        report[f"{split} accuracy"] = f"{point:.3f} (95 % interval {low:.3f}-{high:.3f}, {len(examples)} sentences)"
    report["model_sha256"] = weights_sha256(model)
    info = {"base_model": resolve_model_source(settings).location, "trained": "everything", "mode": settings.mode,
            "num_steps": settings.sentiment_steps, "step_seconds": round(run.seconds_per_step, 4),
            "data": "Hutto & Gilbert (2014) movie-review sentences (Pang & Lee 2005), |mean rating| >= 1"}
    return export_classifier(model, tokenizer, folder, report, info)
