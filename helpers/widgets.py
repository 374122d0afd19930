"""Interactive explorers for the notebooks (ipywidgets), each safe where no widget frontend exists.

Where widgets do not render (GitHub, a headless run) a notebook shows a static figure of the
same thing beside the widget, so nothing is lost.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from helpers import by_hand, plots


def describe_learning_rate(lr: float) -> str:
    """What gradient descent on the course's bowl J does at learning rate ``lr``, in words.

    Each step multiplies the distance to the minimum by ``1 − 2·lr`` (per coordinate).

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    factor = 1.0 - 2.0 * lr
    if lr <= 0:
        return f"factor {factor:+.2f}: α ≤ 0 never moves towards the minimum"
    if abs(factor) < 1:
        speed = "fastest (one step)" if factor == 0 else ("slow" if abs(factor) > 0.9 else "converges")
        how = "zig-zags" if factor < 0 else "walks straight"
        return f"factor {factor:+.2f}: {speed}, {how} to the minimum"
    if abs(factor) == 1:
        return f"factor {factor:+.2f}: bounces between two points forever"
    return f"factor {factor:+.2f}: diverges, each step overshoots further"


def learning_rate_explorer(lr: float = 0.1, num_steps: int = 10, theta0: tuple[float, float] = (0.0, 0.0)):
    """Sliders for the learning rate α and the number of steps that redraw gradient descent on J.

    Returns an ``ipywidgets.interactive`` (display it as a cell's last value). Without
    ipywidgets it draws the figure for ``lr`` and ``num_steps`` once and returns ``None``.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    from IPython.display import display

    def draw(lr: float, num_steps: int) -> None:
        path = by_hand.gradient_descent(by_hand.quadratic_grad, theta0, lr=lr, num_steps=num_steps)
        fig = plots.plot_quadratic_trajectories(
            {f"α = {lr:.2f}, {num_steps} steps": path}, title=f"α = {lr:.2f}: {describe_learning_rate(lr)}"
        )
        fig.set_size_inches(5.5, 4.6)
        display(fig)
        plt.close(fig)  # shown once, inside the widget; not again at the end of the cell
        print(f"J(θ_{num_steps}) = {by_hand.quadratic(path[-1]):.3g}")

    try:
        import ipywidgets
    except ImportError:
        print("ipywidgets is not installed (pip install ipywidgets); a static figure instead:")
        draw(lr, num_steps)
        return None
    lr_slider = ipywidgets.FloatSlider(value=lr, min=0.01, max=1.1, step=0.01, description="α", readout_format=".2f")
    steps_slider = ipywidgets.IntSlider(value=num_steps, min=1, max=40, description="steps")
    return ipywidgets.interactive(draw, lr=lr_slider, num_steps=steps_slider)
