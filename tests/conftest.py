"""Test configuration: the CI environment, nbval's stderr rule, and the shared fixtures.

Tests always run in ``smoke`` mode, offline, without progress bars, whatever the shell says.
"""

from __future__ import annotations

import os

os.environ["COURSE_MODE"] = "smoke"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' own bars (loading weights) ignore TQDM_DISABLE
os.environ.setdefault("MPLBACKEND", "Agg")

# After the environment: huggingface_hub reads HF_HUB_OFFLINE when it is imported.
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tqdm.std import TqdmDefaultWriteLock, tqdm  # noqa: E402
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from helpers.models import tokenizer_dir  # noqa: E402

# tqdm guards its bars with a multiprocessing semaphore, shared with every forked child. A child of
# tests/test_reliability.py killed with -9 while it holds it (a bar being made, even a disabled one)
# would block every later bar in pytest for ever. One process writes the bars here: a thread lock
# is enough, so tqdm never makes the semaphore.
TqdmDefaultWriteLock.mp_lock = None
tqdm.set_lock(TqdmDefaultWriteLock())  # in case an import made the lock already


def pytest_collectstart(collector):
    """nbval: never compare stderr (warnings and progress bars differ between runs)."""
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


# --------------------------------------------------------------------------- shared fixtures
# One definition each of what many test files need. Small on purpose: every test stays fast on
# two cores. Never modify a session-scoped object in a test; copy it first.

TINY_SHAPE = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64)  # vocabulary: GPT-2's 50,257 unless overridden


@pytest.fixture(scope="session")
def tokenizer():
    """GPT-2's tokenizer, from the files shipped in ``data/tokenizer/gpt2`` (no download)."""
    return AutoTokenizer.from_pretrained(tokenizer_dir())


def _random_gpt2(seed: int = 0, **shape) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**{**TINY_SHAPE, **shape})).eval()


@pytest.fixture(scope="session")
def random_gpt2():
    """``random_gpt2(seed=0, **shape)``: a transformers GPT-2 with random weights, in eval mode.

    The default shape is :data:`TINY_SHAPE` with GPT-2's vocabulary; any ``GPT2Config`` field
    can be overridden (``random_gpt2(n_layer=1, vocab_size=97)``). Each call builds a new model.
    """
    return _random_gpt2


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory, tokenizer) -> Path:
    """A release folder written by ``export_release`` from a tiny random GPT-2 (128 positions).

    Shared by the session: tests that change files must copy it first.
    """
    from helpers.deployment import export_release

    return export_release(_random_gpt2(n_positions=128), tokenizer, tmp_path_factory.mktemp("release") / "tiny-release")
