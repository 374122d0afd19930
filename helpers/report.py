"""What every notebook's last cell reports: :func:`record_figures`, the key figures ``make course`` prints.

The course runner itself (``make course``, ``make outputs``, the README's map) is maintainer
tooling and lives in ``tools/course.py``, outside the learner's package.
"""

from __future__ import annotations

import json

from helpers.settings import get_settings

FIGURES_DIR = "figures"  # under artifacts/


def record_figures(notebook: str, **figures: float | int | str) -> dict:
    """Record a notebook's key figures (shown by ``make course``'s summary) and return them.

    Every notebook ends by calling this, e.g. ``record_figures("01", mse=1.2)``.
    """
    figures = {name: value.item() if hasattr(value, "item") else value for name, value in figures.items()}  # NumPy scalars
    folder = get_settings().artifacts_dir / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{notebook}.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return figures

