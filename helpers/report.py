"""What the notebooks report: the environment they run in (:func:`environment_report`, 00) and, in every
notebook's last cell, :func:`record_figures`, the key figures ``make course`` prints.

The course runner itself (``make course``, ``make outputs``, the README's map) is maintainer
tooling and lives in ``tools/course.py``, outside the learner's package.
"""

from __future__ import annotations

import json
import os
import platform

from helpers.models import describe_model_source
from helpers.settings import display_path, get_settings

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


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def environment_report() -> dict[str, str]:
    """Everything worth knowing before the course starts, as an ordered dict of strings.

    Shown by ``00_setup.ipynb``; the README's troubleshooting asks for its output.
    """
    import torch  # here, not above: tools.course reads FIGURES_DIR without waiting for torch
    import transformers

    from helpers.runtime import in_colab, pick_device, precision_policy

    settings = get_settings()
    device = pick_device()
    policy = precision_policy(device)
    memory = _memory_gib()
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mode": settings.mode,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "precision": policy.reason,
        "threads": str(torch.get_num_threads()),
        "memory": f"{memory:.1f} GiB" if memory else "unknown",
        "colab": "yes" if in_colab() else "no",
        "model source": describe_model_source(settings),
        "artifacts": display_path(settings.artifacts_dir),
    }
    return report
