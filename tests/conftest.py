"""Test configuration: the CI environment, nbval's stderr rule, and shared tiny fixtures.

Tests always run in ``smoke`` mode, offline, without progress bars, whatever the shell says.
"""

from __future__ import annotations

import os

os.environ["COURSE_MODE"] = "smoke"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' own bars (loading weights) ignore TQDM_DISABLE
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collectstart(collector):
    """nbval: never compare stderr (warnings and progress bars differ between runs)."""
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
