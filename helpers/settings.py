"""One switch decides every size: ``COURSE_MODE`` = ``smoke`` | ``cpu`` | ``gpu``.

Introduced in ``00_setup.ipynb``; every notebook asks :func:`get_settings` for its sizes
instead of typing numbers. The mode is read once per process.

* ``smoke``: CI and quick checks, each notebook in under a minute on two CPU cores.
* ``cpu``: a laptop runs each notebook in a few minutes (the README map's cpu column).
* ``gpu``: real GPT-2 (124M) from the Hugging Face hub, one Colab T4 session.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

VALID_MODES = ("smoke", "cpu", "gpu")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Every size the course uses, for one mode. Frozen: nobody changes it mid-run."""

    mode: str
    seed: int
    model_id: str | None  # None: the course's tiny GPT-2 base shipped in data/
    block_size: int  # tokens per training example (helpers.models.fit_block_size caps it at the model's context)
    batch_size: int  # examples per optimizer micro-step
    grad_accum_steps: int  # micro-steps per optimizer step
    num_steps: int  # optimizer steps of fine-tuning in 05
    lr: float
    warmup_steps: int
    eval_interval: int  # optimizer steps between validation evaluations
    eval_tokens: int  # at most this many tokens per split when measuring perplexity
    max_chars_per_doc: int | None  # None: whole documents; smoke trims them to stay fast
    sample_tokens: int  # new tokens per generated sample
    bigram_steps: int  # training steps of 03's bigram baseline (each a 50,257-way softmax per pair)
    kv_cache_lengths: tuple[int, ...]  # generated lengths at which 03 times generation with and without a KV cache
    repo_root: Path
    data_dir: Path
    artifacts_dir: Path
    # notebook 04, pretraining: the learner's GPT from random weights, the scaling runs, the scored tokens
    pretrain_steps: int
    pretrain_shape: tuple[int, int, int]  # (n_layer, n_embd, n_head)
    pretrain_block_size: int
    pretrain_batch_size: int
    pretrain_eval_tokens: int  # tokens of validation and of Persuasion scored
    scaling_flops: float  # training FLOPs (03's 6N count) each of the three scaling runs gets
    # 08 sentiment (helpers.classification)
    sentiment_steps: int  # optimizer steps per candidate classifier (and for the release)
    sentiment_batch_size: int  # sentences per step
    sentiment_lr: float  # full fine-tuning; the head alone and LoRA take larger steps
    sentiment_max_tokens: int  # sentences are cut to this many tokens (the longest movie snippet has 62)
    sentiment_eval_examples: int | None  # at most this many sentences per evaluation set; None: all
    # 09 instruction tuning: the mixture, the runs, the exact evaluation
    sft_items_per_family: int  # training conversations per family (authorship, first word)
    sft_sentiment_items: int  # sentiment is learned last and slowest (09's validation): more of its items
    sft_multi_turn: int  # multi-turn conversations chaining 2-3 training items
    sft_steps: int  # optimizer steps of each instruction-tuning run (09 trains two side by side)
    sft_lr: float
    sft_dropout: float  # dropout in both runs (GPT-2 was pretrained with 0.1)
    sft_eval_items: int  # held-out items per family scored (validation and test each)
    sft_shots: int  # solved examples in the base model's few-shot prompt


# The sizes per mode. Reasons in the comments; the notebooks only ever read them.
_MODE_SIZES: dict[str, dict] = {
    "smoke": dict(  # small: CI runs every notebook on 2 cores in under a minute each
        model_id=None, block_size=64, batch_size=4, grad_accum_steps=1, num_steps=6,
        lr=1e-3, warmup_steps=2, eval_interval=3, eval_tokens=2_048,
        max_chars_per_doc=20_000, sample_tokens=20,
        bigram_steps=15, kv_cache_lengths=(8, 32),  # enough to draw the curves, not to read them
        # 04: every piece runs once, nothing is learned
        pretrain_steps=12, pretrain_shape=(1, 32, 2), pretrain_block_size=32, pretrain_batch_size=4,
        pretrain_eval_tokens=1_024, scaling_flops=2e9,
        # 08 sentiment: a few steps per candidate, 200 sentences per evaluation set
        sentiment_steps=8, sentiment_batch_size=16, sentiment_lr=1e-3, sentiment_max_tokens=48,
        sentiment_eval_examples=200,
        # 09: a handful of everything, so the whole notebook runs in well under a minute
        sft_items_per_family=48, sft_sentiment_items=96, sft_multi_turn=8, sft_steps=6, sft_lr=1e-3, sft_eval_items=24, sft_shots=2,
        sft_dropout=0.0,
    ),
    "cpu": dict(  # a laptop: fine-tuning takes a few minutes, each notebook about 5 or fewer
        model_id=None, block_size=128, batch_size=8, grad_accum_steps=1, num_steps=300,
        lr=1e-3, warmup_steps=30, eval_interval=50, eval_tokens=32_768,
        max_chars_per_doc=None, sample_tokens=40,
        bigram_steps=250,  # about a minute on 2 cores; the held-out perplexity has mostly settled
        kv_cache_lengths=(16, 64, 128, 255),  # up to the tiny base's context of 256, from a 1-token prompt
        # 04: about a minute of pretraining on 2 cores, enough to beat a bigram counted on the same windows
        pretrain_steps=150, pretrain_shape=(4, 128, 4), pretrain_block_size=128, pretrain_batch_size=8,
        pretrain_eval_tokens=16_384, scaling_flops=3e11,
        # 08 sentiment: four candidates, the regression head and the release fit in the 5-minute budget
        sentiment_steps=300, sentiment_batch_size=16, sentiment_lr=1e-3, sentiment_max_tokens=64,
        sentiment_eval_examples=None,
        # 09: two runs of 500 steps. Chosen on validation replies to reviews: at 250 steps they were at
        # chance whatever the mixture; with 5,000 sentiment items beside 800 of each other family, 500
        # steps reached 71 % (1,500 of each: 57 % after 600 steps; 450 steps: 61 %; lr 2e-3: chance).
        # 400 test items per family put ±5 points around an accuracy. Dropout 0 against GPT-2's 0.1, on the
        # same validation replies: sentiment 74.5 % vs 71.0 %, authorship 90.2 % vs 88.8 %, first word 4.5 %
        # vs 5.0 % (no worse, within noise), and a step without dropout's random masks takes 15 % less time.
        sft_items_per_family=800, sft_sentiment_items=5_000, sft_multi_turn=300, sft_steps=500, sft_lr=1e-3,
        sft_eval_items=400, sft_shots=2, sft_dropout=0.0,
    ),
    "gpu": dict(  # real GPT-2 small on one T4: about 20 minutes of fine-tuning
        model_id="gpt2", block_size=512, batch_size=8, grad_accum_steps=2, num_steps=1_000,
        lr=5e-5, warmup_steps=100, eval_interval=100, eval_tokens=131_072,
        max_chars_per_doc=None, sample_tokens=60,
        bigram_steps=1_000, kv_cache_lengths=(32, 128, 256, 512),  # GPT-2 goes to 1,024, but uncached runs that long would dominate the notebook
        # 04: a GPT-2-small-shaped model (124M) for 2,000 steps of 16 x 512 tokens (16M tokens, ~20 epochs of the novels)
        pretrain_steps=2_000, pretrain_shape=(12, 768, 12), pretrain_block_size=512, pretrain_batch_size=16,
        pretrain_eval_tokens=131_072, scaling_flops=2e15,
        # 08 sentiment: GPT-2 124M, about two epochs of the movie training split per candidate
        sentiment_steps=500, sentiment_batch_size=32, sentiment_lr=5e-5, sentiment_max_tokens=64,
        sentiment_eval_examples=None,
        # 09: GPT-2 small learns from fewer steps at a fine-tuning learning rate; a larger test
        sft_items_per_family=4_000, sft_sentiment_items=4_000, sft_multi_turn=800, sft_steps=600, sft_lr=5e-5, sft_eval_items=1_000, sft_shots=4,
        sft_dropout=0.1,  # GPT-2's own: not measured at this size
    ),
}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_mode(value: str | None) -> str:
    """Return the mode for a ``COURSE_MODE`` value; unset or empty means auto.

    Auto is ``gpu`` when CUDA is available, else ``cpu``. Raises ``ValueError`` naming
    the valid modes for anything else.
    """
    if value is None or value.strip() == "":
        return "gpu" if _cuda_available() else "cpu"
    mode = value.strip().lower()
    if mode not in VALID_MODES:
        raise ValueError(
            f"COURSE_MODE={value!r} is not a mode; use one of {', '.join(VALID_MODES)} "
            "(or leave it unset to pick gpu when CUDA is available, else cpu)"
        )
    return mode


def make_settings(mode: str, artifacts_dir: Path | None = None, seed: int = 1234) -> Settings:
    """Build the settings for ``mode`` (used by tests and by :func:`get_settings`)."""
    mode = resolve_mode(mode)
    data_dir = REPO_ROOT / "data"
    return Settings(
        mode=mode,
        seed=seed,
        repo_root=REPO_ROOT,
        data_dir=data_dir,
        artifacts_dir=Path(artifacts_dir) if artifacts_dir else REPO_ROOT / "artifacts",
        **_MODE_SIZES[mode],
    )


@functools.cache
def get_settings() -> Settings:
    """The settings of this process, read once from ``COURSE_MODE`` and ``COURSE_ARTIFACTS``.

    Pure: reading them touches neither the network nor a model. Where a model is loaded, its
    context caps the block size (:func:`helpers.models.fit_block_size`).

    Introduced in ``00_setup.ipynb``; every notebook calls it.
    """
    artifacts = os.environ.get("COURSE_ARTIFACTS")
    return make_settings(
        resolve_mode(os.environ.get("COURSE_MODE")),
        artifacts_dir=Path(artifacts).expanduser().resolve() if artifacts else None,
    )


def display_path(path: Path | str, settings: Settings | None = None) -> str:
    """``path`` relative to the repository when it is inside it (what notebooks print), else as given.

    Keeps machine-specific folders out of committed notebook outputs.
    """
    path = Path(path).resolve()
    root = (settings or get_settings()).repo_root
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)

