"""The course's figures: labelled axes, a title that states the finding, ``dpi=100``.

Each function draws on ``ax`` when given one (so a notebook can put panels side by side),
else on a new figure, and returns the figure. Nothing here calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from helpers import by_hand

DPI = 100


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, dpi=DPI)
    return fig, ax


def plot_quadratic_trajectories(
    trajectories: Mapping[str, np.ndarray],
    title: str,
    ax: Axes | None = None,
    limits: tuple[float, float, float, float] = (-1.5, 3.5, -1.0, 5.0),
) -> Figure:
    """Contours of J(w) = (w1−1)² + (w2−2)² with one gradient-descent path per label.

    ``trajectories`` maps a label (e.g. ``"α = 0.1"``) to an array of shape (steps + 1, 2).
    ``limits`` = (w1 min, w1 max, w2 min, w2 max); a diverging path leaves the frame, which
    is the point.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    fig, ax = _axes(ax, (5.5, 5.0))
    x0, x1, y0, y1 = limits
    w1, w2 = np.meshgrid(np.linspace(x0, x1, 120), np.linspace(y0, y1, 120))
    J = (w1 - by_hand.QUADRATIC_MINIMUM[0]) ** 2 + (w2 - by_hand.QUADRATIC_MINIMUM[1]) ** 2
    contours = ax.contour(w1, w2, J, levels=[0.05, 0.25, 0.5, 1, 2, 4, 8, 16], colors="0.7", linewidths=0.8)
    ax.clabel(contours, fontsize=7, fmt="%g")
    ax.plot(*by_hand.QUADRATIC_MINIMUM, marker="*", color="black", markersize=12, linestyle="none", label="minimum")
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


# ---------------------------------------------------------------- 03: training curves


def plot_history(history: list[dict], title: str = "Training", ax_row=None) -> Figure:
    """Training loss per step (log scale), validation loss where measured, learning rate, tokens/s.

    Introduced in ``03_finetuning_gpt2.ipynb``; 04 reuses it for the overfitting check.
    """
    steps = [h["step"] for h in history]
    valid = [(h["step"], h["valid_loss"]) for h in history if "valid_loss" in h]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=100) if ax_row is None else (ax_row[0].figure, ax_row)
    axes[0].plot(steps, [h["loss"] for h in history], lw=1, label="train (per step)")
    if valid:
        axes[0].plot(*zip(*valid), "o-", label="validation")
    axes[0].set(xlabel="optimizer step", ylabel="loss (nats/token)", yscale="log", title=title)
    axes[0].legend()
    axes[1].plot(steps, [h["lr"] for h in history])
    axes[1].set(xlabel="optimizer step", ylabel="learning rate", title="Warmup, then cosine")
    axes[2].plot(steps, [h["tokens_per_s"] for h in history], lw=1)
    axes[2].set(xlabel="optimizer step", ylabel="tokens / second", title="Throughput")
    fig.tight_layout()
    return fig


def live_history_plot(every: int = 10):
    """A callback for ``helpers.training.train(on_log=...)`` that redraws the curves every ``every`` steps.

    Introduced in ``03_finetuning_gpt2.ipynb``. It updates one output in place (no pile of
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
