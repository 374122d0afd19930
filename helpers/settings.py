"""One switch decides every size: ``COURSE_MODE`` = ``smoke`` | ``cpu`` | ``gpu``.

Introduced in ``00_setup.ipynb``; every notebook asks :func:`get_settings` for its sizes
instead of typing numbers. The mode is read once per process.

* ``smoke``: CI and quick checks, each notebook in under a minute on two CPU cores.
* ``cpu``: a laptop finishes the whole course in under 30 minutes.
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
    block_size: int  # tokens per training example (get_settings keeps it within the model's context)
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


# The sizes per mode. Reasons in the comments; the notebooks only ever read them.
_MODE_SIZES: dict[str, dict] = {
    "smoke": dict(  # small: CI runs every notebook on 2 cores in under a minute each
        model_id=None, block_size=64, batch_size=4, grad_accum_steps=1, num_steps=6,
        lr=1e-3, warmup_steps=2, eval_interval=3, eval_tokens=2_048,
        max_chars_per_doc=20_000, sample_tokens=20,
        bigram_steps=15, kv_cache_lengths=(8, 32),  # enough to draw the curves, not to read them
    ),
    "cpu": dict(  # a laptop: fine-tuning takes a few minutes, the whole course < 30 min
        model_id=None, block_size=128, batch_size=8, grad_accum_steps=1, num_steps=300,
        lr=1e-3, warmup_steps=30, eval_interval=50, eval_tokens=32_768,
        max_chars_per_doc=None, sample_tokens=40,
        bigram_steps=250,  # about a minute on 2 cores; the held-out perplexity has mostly settled
        kv_cache_lengths=(16, 64, 128, 255),  # up to the tiny base's context of 256, from a 1-token prompt
    ),
    "gpu": dict(  # real GPT-2 small on one T4: about 20 minutes of fine-tuning
        model_id="gpt2", block_size=512, batch_size=8, grad_accum_steps=2, num_steps=1_000,
        lr=5e-5, warmup_steps=100, eval_interval=100, eval_tokens=131_072,
        max_chars_per_doc=None, sample_tokens=60,
        bigram_steps=1_000, kv_cache_lengths=(32, 128, 256, 512),  # GPT-2 goes to 1,024, but uncached runs that long would dominate the notebook
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

    Blocks never exceed the context of the model the course will load (:func:`helpers.models.fit_to_model`).

    Introduced in ``00_setup.ipynb``; every notebook calls it.
    """
    from helpers.models import fit_to_model  # helpers.models imports this module

    artifacts = os.environ.get("COURSE_ARTIFACTS")
    return fit_to_model(make_settings(
        resolve_mode(os.environ.get("COURSE_MODE")),
        artifacts_dir=Path(artifacts).expanduser().resolve() if artifacts else None,
    ))


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

