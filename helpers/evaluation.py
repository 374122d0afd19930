"""Evaluation that tells the truth: perplexity done right, with intervals and samples.

Introduced in ``07_evaluation.ipynb``; the tiny base's model card (``tools/pretrain_tiny_base.py``)
and 05's before/after numbers use the same perplexity functions. Read top to bottom:

1. perplexity: sliding windows, the naive split, one score per document (07 writes the loop first);
2. intervals (07 writes the bootstrap in its cells; :func:`paired_bootstrap` is its hardened twin, for
   the gate of 11); 07 also writes perplexity per word and per byte in a cell;
3. generation: decoding strategies side by side, with distinct-n and repetition figures
   (07 writes its robustness and bias probes in its cells, on :func:`sliding_window_nll`);
4. the report that ``10_deployment.ipynb`` puts on the model card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from helpers import cards
from helpers.atomic import write_text_atomic
from helpers.runtime import eval_mode, progress_bar, set_seed
from helpers.settings import get_settings

TokenIds = torch.Tensor | Sequence[int]

# ---------------------------------------------------------------------------------------------
# 1. Perplexity
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NLLResult:
    """Summed negative log-likelihood (nats) over ``num_tokens`` scored tokens."""

    nll_sum: float
    num_tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.num_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def window_spans(num_tokens: int, context_len: int, stride: int) -> list[tuple[int, int, int]]:
    """The ``(begin, end, num_scored)`` windows of a sliding-window evaluation.

    Introduced in ``07_evaluation.ipynb``. Each window sees up to ``context_len`` tokens;
    only its last ``num_scored`` tokens (those not covered by an earlier window) count, the
    rest are context. The ``num_scored`` add up to ``num_tokens``: every token is covered
    exactly once. With ``stride == context_len`` this is the naive split into
    non-overlapping blocks, where each block's first token has no context and so cannot
    actually be scored (the naive split, ``stride == context_len``).
    """
    if context_len < 2:
        raise ValueError(f"context_len must be at least 2 (one token of context, one to score), got {context_len}")
    if not 0 < stride <= context_len:
        raise ValueError(f"stride must be in 1..context_len ({context_len}), got {stride}")
    if num_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {num_tokens}")
    spans, previous_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + context_len, num_tokens)
        spans.append((begin, end, end - previous_end))
        previous_end = end
        if end == num_tokens:
            break
    return spans


def max_context(model: torch.nn.Module) -> int | None:
    """The most positions ``model`` can attend to (``n_positions`` for GPT-2), or None if unknown.

    Introduced in ``07_evaluation.ipynb``: the longest window a perplexity evaluation can use.
    """
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _check_context(model: torch.nn.Module, context_len: int) -> None:
    limit = max_context(model)
    if limit is not None and context_len > limit:
        raise ValueError(
            f"context_len={context_len} is longer than the model's {limit} positions; "
            f"use context_len <= {limit} (e.g. model.config.n_positions)"
        )


@torch.no_grad()
def sliding_window_nll(
    model: torch.nn.Module,
    input_ids: TokenIds,
    context_len: int,
    stride: int,
    batch_size: int = 8,
    progress: bool = False,
) -> NLLResult:
    """Sum of next-token NLL over a long 1-D token sequence, scored with a sliding window.

    Introduced in ``07_evaluation.ipynb``. Context tokens are masked with -100; the mean is
    taken over scored tokens, not over windows, so a short last window weighs what its
    tokens weigh. The first token has no context and is never scored: with
    ``stride < context_len``, ``num_tokens == len(input_ids) - 1``. With
    ``stride == context_len`` (the naive split) the first token of every block goes
    unscored too.
    """
    input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    _check_context(model, context_len)
    device = next(model.parameters()).device
    spans = window_spans(len(input_ids), context_len, stride)
    nll_sum, scored = 0.0, 0
    # Batch windows of equal length together (all but possibly the last are full length).
    groups: list[list[tuple[int, int, int]]] = []
    for span in spans:
        if groups and len(groups[-1]) < batch_size and groups[-1][0][1] - groups[-1][0][0] == span[1] - span[0]:
            groups[-1].append(span)
        else:
            groups.append([span])
    with eval_mode(model):
        for group in progress_bar(groups, progress, desc="perplexity", leave=False):
            inputs = torch.stack([input_ids[b:e] for b, e, _ in group]).to(device)
            labels = inputs.clone()
            for row, (b, e, n) in enumerate(group):
                labels[row, : (e - b) - n] = -100
            # The LM head (most of the work in a small model) runs only on the last `keep` positions:
            # the ones that predict a scored token, and the window's last one, which predicts nothing.
            keep = min(inputs.shape[1], max(n for _, _, n in group) + 1)
            logits = model(inputs, logits_to_keep=keep).logits.float()
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                labels[:, inputs.shape[1] - keep + 1 :].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            nll_sum += loss.item()
            scored += int((labels[:, 1:] != -100).sum())
    return NLLResult(nll_sum, scored)


def perplexity(
    model: torch.nn.Module, input_ids: TokenIds, context_len: int, stride: int | None = None, batch_size: int = 8
) -> float:
    """Perplexity of ``input_ids`` with a sliding window (``stride`` defaults to half the context).

    Introduced in ``07_evaluation.ipynb``; 05 uses it for its before/after numbers.
    """
    stride = stride or max(1, context_len // 2)
    return sliding_window_nll(model, input_ids, context_len, stride, batch_size).perplexity


def document_nlls(
    model: torch.nn.Module,
    documents: Mapping[str, TokenIds],
    context_len: int,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, NLLResult]:
    """Score each document on its own: ``{name: NLLResult}``, the input of the bootstrap.

    Introduced in ``07_evaluation.ipynb``. Documents never share a window, so no document
    is context for another. ``stride`` defaults to half the context, as in :func:`perplexity`.
    """
    if not documents:
        raise ValueError("documents is empty; pass {name: token ids} with at least one document")
    stride = stride or max(1, context_len // 2)
    results = {}
    for name, ids in progress_bar(documents.items(), progress, desc="documents", leave=False):
        if len(ids) < 2:
            raise ValueError(f"document {name!r} has {len(ids)} token(s); each needs at least 2 to score one")
        results[name] = sliding_window_nll(model, ids, context_len, stride, batch_size)
    return results


def chunk_tokens(ids: TokenIds, chunk_len: int) -> dict[str, torch.Tensor]:
    """Split one long token sequence into ``{"chunk_000": ids, ...}`` of ``chunk_len`` tokens.

    Introduced in ``07_evaluation.ipynb`` to bootstrap over one held-out play (Hamlet)
    with chunks of ~1000 tokens. A tail shorter than half a chunk joins the previous chunk.
    Caveat: chunks of one play are not independent documents (same characters, same
    plot, neighbouring chunks share style), so an interval over chunks is optimistic,
    narrower than one over independent texts would be.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if chunk_len < 2:
        raise ValueError(f"chunk_len must be at least 2 tokens, got {chunk_len}")
    if len(ids) < 2:
        raise ValueError(f"need at least 2 tokens to make a chunk, got {len(ids)}")
    starts = list(range(0, len(ids), chunk_len))
    if len(starts) > 1 and len(ids) - starts[-1] < chunk_len // 2:
        starts.pop()  # the short tail joins the previous chunk
    ends = starts[1:] + [len(ids)]
    width = max(3, len(str(len(starts) - 1)))
    return {f"chunk_{i:0{width}d}": ids[b:e] for i, (b, e) in enumerate(zip(starts, ends, strict=True))}


# ---------------------------------------------------------------------------------------------
# 2. Intervals, and perplexity without a tokenizer
# ---------------------------------------------------------------------------------------------


class Interval(NamedTuple):
    """A point estimate and its bootstrap interval; unpacks as ``point, low, high``.

    ``07_evaluation.ipynb`` writes the bootstrap that makes these (plain and paired) in its cells;
    :func:`write_report` stores each as ``{"point", "low", "high"}``.
    """

    point: float
    low: float
    high: float


class PairedDifference(NamedTuple):
    """Model b minus model a on the same documents: in perplexity, and relative to a."""

    difference: Interval  # perplexity(b) - perplexity(a)
    relative: Interval  # (perplexity(b) - perplexity(a)) / perplexity(a)


def paired_bootstrap(
    results_a: Mapping[str, NLLResult],
    results_b: Mapping[str, NLLResult],
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Paired bootstrap of perplexity(b) - perplexity(a) over the same documents, and of (b - a) / a.

    The hardened twin of ``bootstrap_difference`` that ``07_evaluation.ipynb`` writes in its cells
    (a test checks they agree to the last bit for the same seed); ``helpers.registry.gate`` and
    ``11_iteration.ipynb`` decide with it. Each replicate draws the documents once, with
    replacement, and applies the draw to both models; perplexities are token-weighted.
    """
    if set(results_a) != set(results_b):
        raise ValueError(f"both models must be scored on the same documents; they differ in "
                         f"{sorted(set(results_a) ^ set(results_b))}")
    if len(results_a) < 2:
        raise ValueError(f"a bootstrap over {len(results_a)} document says nothing about spread; split the text first")
    if num_samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need num_samples >= 1 and 0 < confidence < 1, got {num_samples} and {confidence}")
    names = sorted(results_a)
    nll_a, nll_b = (np.array([r[n].nll_sum for n in names]) for r in (results_a, results_b))
    tokens_a, tokens_b = (np.array([r[n].num_tokens for n in names], dtype=np.float64) for r in (results_a, results_b))
    index = np.random.default_rng(seed).integers(0, len(names), size=(num_samples, len(names)))

    def interval(point: float, replicates: np.ndarray) -> Interval:
        low, high = np.percentile(replicates, [50 * (1 - confidence), 50 * (1 + confidence)])
        return Interval(float(point), float(low), float(high))

    with np.errstate(over="ignore", invalid="ignore"):  # a diverged model (inf NLL) gives inf/nan, not warnings
        ppl_a = np.exp(nll_a[index].sum(axis=1) / tokens_a[index].sum(axis=1))
        ppl_b = np.exp(nll_b[index].sum(axis=1) / tokens_b[index].sum(axis=1))
        point_a, point_b = (float(np.exp(n.sum() / t.sum())) for n, t in ((nll_a, tokens_a), (nll_b, tokens_b)))
        return PairedDifference(difference=interval(point_b - point_a, ppl_b - ppl_a),
                                relative=interval(point_b / point_a - 1, ppl_b / ppl_a - 1))


# ---------------------------------------------------------------------------------------------
# 3. Generation under several decoding strategies
# ---------------------------------------------------------------------------------------------

# name -> keyword arguments for model.generate. top_k=0 switches off transformers' default
# top-k of 50, so "temperature" and "top-p" are what their names say.
DECODING_STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": dict(do_sample=False, num_beams=1),
    "beam (4)": dict(do_sample=False, num_beams=4),
    "temperature 0.7": dict(do_sample=True, temperature=0.7, top_k=0),
    "temperature 1.2": dict(do_sample=True, temperature=1.2, top_k=0),
    "top-k 50": dict(do_sample=True, top_k=50),
    "top-p 0.9": dict(do_sample=True, top_p=0.9, top_k=0),
    "greedy + repetition penalty 1.3": dict(do_sample=False, num_beams=1, repetition_penalty=1.3),
    "top-p 0.9 + repetition penalty 1.3": dict(do_sample=True, top_p=0.9, top_k=0, repetition_penalty=1.3),
}


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    tokens = list(tokens)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[int], n: int) -> float:
    """Unique n-grams / all n-grams of ``tokens`` (1.0: no n-gram repeats).

    Introduced in ``07_evaluation.ipynb`` (distinct-n, Li et al. 2016), computed on
    generated token ids. A sequence shorter than ``n`` has no n-grams: 0.0.
    """
    grams = _ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(tokens: Sequence[int], n: int = 4) -> float:
    """Share of n-grams that already appeared earlier in ``tokens`` (0.0: nothing repeats).

    Introduced in ``07_evaluation.ipynb``. With ``n=4`` it catches the loops that greedy
    decoding falls into ("the king, the king, the king") while ordinary function-word
    repeats ("of the") do not count. It equals ``1 - distinct_n(tokens, n)`` (seq-rep-n of
    Welleck et al. 2019); the samples report it at n=4 beside distinct-1 and distinct-2.
    """
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    grams = _ngrams(tokens, n)
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


@torch.no_grad()
def generate_samples(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    strategies: Mapping[str, Mapping[str, Any]] | None = None,
    max_new_tokens: int = 40,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Generate from every prompt under every strategy; one row per (strategy, prompt).

    Introduced in ``07_evaluation.ipynb``. Rows hold ``strategy, prompt, text`` (the new
    text only), ``new_tokens``, ``distinct_1``, ``distinct_2`` and ``repetition_rate``
    (n=4), all on the new tokens. The seed is set before each generation (``seed + i`` for
    the i-th prompt), so any row can be reproduced alone, two calls give identical rows,
    and all strategies draw from the same random numbers for a given prompt: a fair
    comparison, while different prompts do not share one stream. ``min_new_tokens = max_new_tokens``
    keeps the end-of-text token from stopping a sample early: every strategy returns
    exactly ``max_new_tokens`` tokens, so the figures compare like with like.
    ``strategies`` defaults to :data:`DECODING_STRATEGIES`.
    """
    strategies = DECODING_STRATEGIES if strategies is None else strategies
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of strings, got one string; use [{prompts[:30]!r}]")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    limit = max_context(model)
    rows = []
    with eval_mode(model):
        for name, kwargs in strategies.items():
            for i, prompt in enumerate(prompts):
                inputs = tokenizer(prompt, return_tensors="pt").to(device)
                _check_room(inputs.input_ids.shape[1], max_new_tokens, limit)
                set_seed(seed + i)
                output = model.generate(**inputs, **kwargs, max_new_tokens=max_new_tokens,
                                        min_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
                new = output[0, inputs.input_ids.shape[1]:].tolist()
                rows.append(dict(strategy=name, prompt=prompt, text=tokenizer.decode(new), new_tokens=len(new),
                                 distinct_1=distinct_n(new, 1), distinct_2=distinct_n(new, 2),
                                 repetition_rate=repetition_rate(new, 4)))
    return rows


def _check_room(prompt_len: int, max_new_tokens: int, limit: int | None) -> None:
    """A clear error when a prompt is empty or leaves no room for ``max_new_tokens`` in the context."""
    if prompt_len == 0:
        raise ValueError("an empty prompt has no token to continue from; give each prompt some text")
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"{limit} positions; shorten the prompt or ask for fewer tokens"
        )


FIGURES = ("distinct_1", "distinct_2", "repetition_rate")


def summarize_samples(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean distinct-1, distinct-2 and repetition rate per strategy, in the rows' order.

    Introduced in ``07_evaluation.ipynb``; this is the ``decoding`` part of the report.
    """
    by_strategy: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_strategy.setdefault(row["strategy"], []).append(row)
    return [
        dict(
            strategy=name,
            samples=len(group),
            new_tokens=sum(row["new_tokens"] for row in group),
            **{figure: float(np.mean([row[figure] for row in group])) for figure in FIGURES},
        )
        for name, group in by_strategy.items()
    ]


def samples_table(rows: Sequence[Mapping[str, Any]], format: str = "markdown", max_chars: int = 160) -> str:
    """A compact side-by-side table: one line per strategy, one text column per prompt.

    Introduced in ``07_evaluation.ipynb``. The last columns are the strategy's mean
    distinct-1, distinct-2 and repetition rate (n=4) from :func:`summarize_samples`. ``format``
    is ``"markdown"`` (show with ``IPython.display.Markdown``), ``"html"``
    (``IPython.display.HTML``) or ``"text"`` (``print``). Texts longer than ``max_chars`` are
    cut with an ellipsis. The rendering is :func:`helpers.cards.samples_table`.
    """
    return cards.samples_table(rows, summarize_samples(rows), FIGURES, format=format, max_chars=max_chars)


# ---------------------------------------------------------------------------------------------
# 4. The report
# ---------------------------------------------------------------------------------------------

REPORT_KEYS = ("model_sha256", "settings", "perplexity", "difference", "decoding", "probes")


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's weights: every tensor of its ``state_dict`` by name, in fp32, in name order.

    Introduced in ``07_evaluation.ipynb``, whose report records it as ``model_sha256``;
    ``helpers.deployment.export_release`` (10) refuses a report whose checksum is not the
    released model's. The same weights give the same checksum whatever their dtype or device.
    """
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)};".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def default_report_path() -> Path:
    """``artifacts/eval/report.json`` under the settings' artifacts folder (``07_evaluation.ipynb`` writes it)."""
    return get_settings().artifacts_dir / "eval" / "report.json"


def _plain(value: Any) -> Any:
    """Intervals and dataclasses become dicts, NumPy numbers and paths plain JSON values."""
    if hasattr(value, "_asdict"):  # NamedTuple: Interval, PairedDifference
        return {key: _plain(item) for key, item in value._asdict().items()}
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(report: Mapping[str, Any], path: str | Path | None = None) -> Path:
    """Write the evaluation report as JSON, atomically, and return its path.

    Introduced in ``07_evaluation.ipynb``; ``10_deployment.ipynb`` puts it on the model
    card. Default path: ``artifacts/eval/report.json``. Intervals are written as
    ``{"point", "low", "high"}``. Expected shape (extra keys are kept)::

        {
          "model_sha256": str,                                     # weights_sha256(the evaluated model)
          "settings":   {"mode", "context_len", "stride", "num_samples", "confidence", "seed",
                         "max_new_tokens", "test_text": "hamlet", "chunk_len", ...},
          "perplexity": {"base": {"point", "low", "high"}, "finetuned": {"point", "low", "high"},
                         "num_documents": int, "num_tokens": int},
          "difference": {"difference": {"point", "low", "high"},   # finetuned - base
                         "relative": {"point", "low", "high"},     # (finetuned - base) / base
                         "excludes_zero": bool},
          "decoding":   [{"strategy", "samples", "new_tokens", "distinct_1", "distinct_2",
                          "repetition_rate"}, ...],                # summarize_samples(rows)
          "probes":     {"robustness": {"rows": [...], "caveats": str},
                         "bias": {"rows": [...], "summary": {...}, "caveats": str}},
          "tokenizer_free": {"base": {...}, "finetuned": {...}},   # 07's tokenizer_free(...), optional
        }

    The file is written to a temporary file beside it and moved into place with
    ``os.replace``, so a reader never sees half a report.
    """
    if not isinstance(report, Mapping):
        raise TypeError(f"report must be a dict, got {type(report).__name__}")
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(
            f"the report lacks {missing}; it needs all of {list(REPORT_KEYS)} (see write_report's docstring)"
        )
    try:
        text = json.dumps(_plain(report), indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"the report cannot be written as JSON ({error}); use plain numbers, strings, lists and dicts"
        ) from error
    return write_text_atomic(Path(path) if path is not None else default_report_path(), text + "\n")


def load_report(path: str | Path | None = None) -> dict[str, Any]:
    """Read the report written by :func:`write_report` (default ``artifacts/eval/report.json``).

    Introduced in ``07_evaluation.ipynb``; ``10_deployment.ipynb`` reads it for the model card.
    """
    path = Path(path) if path is not None else default_report_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no evaluation report at {path}; run 07_evaluation.ipynb (it calls write_report) first"
        )
    return json.loads(path.read_text(encoding="utf-8"))
