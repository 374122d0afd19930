"""The course's figures: labelled axes, a title that states the finding, ``dpi=100``.

Each function draws on ``ax`` when given one (so a notebook can put panels side by side),
else on a new figure, and returns the figure. Nothing here calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

DPI = 100


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, dpi=DPI)
    return fig, ax


# ---------------------------------------------------------------- 04: training curves


def plot_history(history: list[dict], title: str = "Training", ax_row=None) -> Figure:
    """Training loss per step (log scale), validation loss where measured, learning rate, tokens/s.

    Introduced in ``05_finetuning_gpt2.ipynb``; 07 reuses it for the overfitting check.
    """
    steps = [h["step"] for h in history]
    valid = [(h["step"], h["valid_loss"]) for h in history if "valid_loss" in h]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=100) if ax_row is None else (ax_row[0].figure, ax_row)
    axes[0].plot(steps, [h["loss"] for h in history], lw=1, label="train (per step)")
    if valid:
        axes[0].plot(*zip(*valid), "o-", label="validation")
    axes[0].set(xlabel="optimizer step", ylabel="loss (nats/token)", yscale="log", title=title)
    axes[0].yaxis.set_major_formatter(FormatStrFormatter("%g"))  # "5", not "5 x 10^0"
    axes[0].yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axes[0].legend()
    axes[1].plot(steps, [h["lr"] for h in history])
    axes[1].set(xlabel="optimizer step", ylabel="learning rate", title="Warmup, then cosine")
    axes[2].plot(steps, [h["tokens_per_s"] for h in history], lw=1)
    axes[2].set(xlabel="optimizer step", ylabel="tokens / second", title="Throughput")
    fig.tight_layout()
    return fig


def live_history_plot(every: int = 10):
    """A callback for ``helpers.training.train(on_log=...)`` that redraws the curves every ``every`` steps.

    Introduced in ``05_finetuning_gpt2.ipynb``. It updates one output in place (no pile of
    figures), and does nothing outside a notebook.
    """
    from IPython import get_ipython
    from IPython.display import display

    handle = None

    def on_log(history: list[dict]) -> None:
        nonlocal handle
        step = history[-1]["step"]
        if get_ipython() is None or step % every:
            return
        fig = plot_history(history, title=f"Training, step {step}")
        if handle is None:
            handle = display(fig, display_id=True)
        else:
            handle.update(fig)
        plt.close(fig)

    return on_log


# ---------------------------------------------------------------- 06: evaluation


def plot_intervals(
    intervals: Mapping[str, tuple[float, float, float]],
    title: str,
    ax: Axes | None = None,
    xlabel: str = "perplexity",
    reference: float | None = None,
) -> Figure:
    """One row per label: the point estimate with its interval as a horizontal error bar.

    ``intervals`` maps a label to ``(point, low, high)`` (an ``Interval`` unpacks so).
    ``reference`` draws a dashed vertical line, e.g. 0 for a difference: an interval that
    crosses it does not show a change.

    Introduced in ``07_evaluation.ipynb``.
    """
    fig, ax = _axes(ax, (6.0, 0.6 + 0.6 * len(intervals)))
    labels = list(intervals)
    for row, label in enumerate(labels):
        point, low, high = intervals[label]
        ax.errorbar(point, row, xerr=[[point - low], [high - point]], fmt="o", capsize=5, color=f"C{row}")
        ax.annotate(f"{point:.2f} [{low:.2f}, {high:.2f}]", (point, row), xytext=(0, 8),
                    textcoords="offset points", ha="center", fontsize=8)
    if reference is not None:
        ax.axvline(reference, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.6, len(labels) - 0.2)
    ax.margins(x=0.15)  # room for the labels above the points
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return fig
