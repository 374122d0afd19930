"""The course's figures: labelled axes, a title that states the finding, ``dpi=100``.

Each function draws on ``ax`` when given one (so a notebook can put panels side by side),
else on a new figure, and returns the figure. Nothing here calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

DPI = 100


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, dpi=DPI)
    return fig, ax


def plot_descent_paths(
    trajectories: Mapping[str, np.ndarray],
    title: str,
    loss_fn: Callable[[np.ndarray], np.ndarray],
    minimum: Sequence[float],
    ax: Axes | None = None,
    limits: tuple[float, float, float, float] = (-1.5, 3.5, -1.0, 5.0),
) -> Figure:
    """Contours of a two-parameter loss with one gradient-descent path per label.

    ``loss_fn`` takes an array whose last axis holds ``(w1, w2)`` and returns the loss for each
    point (notebook 01's ``J``); ``minimum`` is marked with a star. ``trajectories`` maps a label
    (e.g. ``"α = 0.1"``) to an array of shape (steps + 1, 2). ``limits`` = (w1 min, w1 max,
    w2 min, w2 max); a diverging path leaves the frame, which is the point.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    fig, ax = _axes(ax, (5.5, 5.0))
    x0, x1, y0, y1 = limits
    w1, w2 = np.meshgrid(np.linspace(x0, x1, 120), np.linspace(y0, y1, 120))
    contours = ax.contour(w1, w2, loss_fn(np.stack([w1, w2], axis=-1)), levels=[0.05, 0.25, 0.5, 1, 2, 4, 8, 16],
                          colors="0.7", linewidths=0.8)
    ax.clabel(contours, fontsize=7, fmt="%g")
    ax.plot(*minimum, marker="*", color="black", markersize=12, linestyle="none", label="minimum")
    for label, path in trajectories.items():
        path = np.asarray(path)
        ax.plot(path[:, 0], path[:, 1], marker="o", markersize=3.5, linewidth=1.2, label=label)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_loss_curves(
    curves: Mapping[str, Sequence[float]],
    title: str,
    ax: Axes | None = None,
    xlabel: str = "step",
    ylabel: str = "loss",
    log: bool = True,
) -> Figure:
    """One line per label of a loss against the step, on a log scale by default.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    fig, ax = _axes(ax, (6.0, 4.0))
    for label, values in curves.items():
        ax.plot(np.arange(len(values)), values, linewidth=1.5, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_train_val_bars(
    train: Sequence[float],
    val: Sequence[float],
    title: str,
    ax: Axes | None = None,
    ylabel: str = "MSE",
    reference: tuple[str, float] | None = None,
) -> Figure:
    """Train vs validation value per cross-validation fold, side by side; optional dashed reference line.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    fig, ax = _axes(ax, (6.0, 3.8))
    folds = np.arange(1, len(train) + 1)
    ax.bar(folds - 0.2, train, width=0.4, label="train")
    ax.bar(folds + 0.2, val, width=0.4, label="validation")
    if reference is not None:
        ax.axhline(reference[1], color="black", linestyle="--", linewidth=1, label=reference[0])
    ax.set_xticks(folds)
    ax.set_ylim(0, 1.3 * max(*train, *val, reference[1] if reference else 0.0))  # headroom for the legend
    ax.set_xlabel("fold")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    return fig


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


def plot_perplexity_vs_stride(rows: Sequence[Mapping], title: str, ax: Axes | None = None) -> Figure:
    """Perplexity per stride; each point labelled with the tokens computed per token scored.

    ``rows`` hold ``stride``, ``perplexity`` and ``cost`` (forward-pass tokens per scored
    token). Introduced in ``07_evaluation.ipynb``.
    """
    fig, ax = _axes(ax, (6.0, 3.5))
    strides = [row["stride"] for row in rows]
    ax.plot(strides, [row["perplexity"] for row in rows], "o-")
    for row in rows:
        ax.annotate(f"{row['cost']:.1f}× compute", (row["stride"], row["perplexity"]), xytext=(4, 6),
                    textcoords="offset points", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(strides, [str(s) for s in strides])
    ax.minorticks_off()
    ax.margins(x=0.12, y=0.2)  # room for the labels
    ax.set_xlabel("stride (tokens); stride = context is the naive split")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig


def plot_decoding_summary(summary: Sequence[Mapping], title: str, ax: Axes | None = None) -> Figure:
    """Distinct-1, distinct-2 and the 4-gram repetition rate per decoding strategy, as bars.

    ``summary`` is :func:`helpers.evaluation.summarize_samples`' output. Introduced in
    ``07_evaluation.ipynb``.
    """
    fig, ax = _axes(ax, (7.0, 0.9 + 0.45 * len(summary)))
    names = [row["strategy"] for row in summary]
    rows = np.arange(len(names))
    figures = (("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("repetition_rate", "repetition (4-gram)"))
    for i, (key, label) in enumerate(figures):
        ax.barh(rows + (i - 1) * 0.27, [row[key] for row in summary], height=0.27, label=label)
    ax.set_yticks(rows, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("share of n-grams")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the bars, never on them
    ax.grid(True, axis="x", alpha=0.3)
    return fig
