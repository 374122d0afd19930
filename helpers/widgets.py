"""Interactive explorers for the notebooks (ipywidgets), each safe where no widget frontend exists.

Where widgets do not render (GitHub, a headless run) a notebook shows a static figure of the
same thing beside the widget, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np

from helpers import plots
from helpers.evaluation import generate_samples, max_context


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


def learning_rate_explorer(
    gradient_descent: Callable,
    grad_fn: Callable[[np.ndarray], np.ndarray],
    loss_fn: Callable[[np.ndarray], np.ndarray],
    minimum: Sequence[float],
    lr: float = 0.1,
    num_steps: int = 10,
    theta0: tuple[float, float] = (0.0, 0.0),
):
    """Sliders for the learning rate α and the number of steps that redraw *your* gradient descent.

    ``gradient_descent(grad_fn, theta0, lr, num_steps)`` is the function notebook 01 writes, run
    on the two-parameter loss ``loss_fn`` whose contours and ``minimum`` are drawn as in
    :func:`helpers.plots.plot_descent_paths`. The figure of the starting state (``lr``,
    ``num_steps``) is an ordinary output of the cell, so a reader without a live kernel (GitHub,
    nbviewer) sees it; moving a slider redraws that same figure in place. Returns the sliders
    (display them as the cell's last value), or ``None`` when ipywidgets is not installed.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    from IPython.display import display

    def figure(lr: float, num_steps: int):
        path = gradient_descent(grad_fn, np.asarray(theta0, dtype=np.float64), lr=lr, num_steps=num_steps)
        title = f"α = {lr:.2f}, {num_steps} steps: J = {float(loss_fn(path[-1])):.3g}\n{describe_learning_rate(lr)}"
        fig = plots.plot_descent_paths({f"α = {lr:.2f}": path}, title, loss_fn, minimum)
        plt.close(fig)  # shown once, through the display handle, not again at the end of the cell
        return fig

    handle = display(figure(lr, num_steps), display_id=True)
    try:
        import ipywidgets
    except ImportError:
        print("ipywidgets is not installed (pip install ipywidgets): the figure above stays as it is")
        return None
    lr_slider = ipywidgets.FloatSlider(value=lr, min=0.01, max=1.1, step=0.01, description="α", readout_format=".2f")
    steps_slider = ipywidgets.IntSlider(value=num_steps, min=1, max=40, description="steps")

    def redraw(_change=None) -> None:
        handle.update(figure(lr_slider.value, steps_slider.value))

    lr_slider.observe(redraw, names="value")
    steps_slider.observe(redraw, names="value")
    sliders = ipywidgets.HBox([lr_slider, steps_slider])
    sliders.add_class("learning-rate-explorer")  # a name for the page's element (tests/test_browser.py finds it)
    return sliders


# --- 07_evaluation.ipynb -------------------------------------------------------------------


def decoding_kwargs(temperature: float, top_k: int = 0, top_p: float = 1.0) -> dict:
    """``model.generate`` keyword arguments for the playground's sliders.

    ``temperature`` 0 means greedy decoding (top-k and top-p then do nothing); ``top_k`` 0
    and ``top_p`` 1.0 switch those filters off, as in :data:`helpers.evaluation.DECODING_STRATEGIES`
    (``top_k=0`` also switches off transformers' default top-k of 50).

    Introduced in ``07_evaluation.ipynb``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature}")
    if top_k < 0 or int(top_k) != top_k:
        raise ValueError(f"top_k must be a whole number, 0 to switch it off, got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1.0 switches it off), got {top_p}")
    if temperature == 0:
        return dict(do_sample=False, num_beams=1)
    return dict(do_sample=True, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.9,
    seed: int = 0,
) -> str:
    """The model's continuation of ``prompt`` (new text only) under the given decoding settings.

    Runs :func:`helpers.evaluation.generate_samples` with one strategy, so the seed, the
    exact ``max_new_tokens`` and the checks on the prompt's length are the same as in the
    comparison table. Bad settings raise ``ValueError`` with the reason.

    Introduced in ``07_evaluation.ipynb``.
    """
    strategy = {"playground": decoding_kwargs(temperature, top_k, top_p)}
    rows = generate_samples(model, tokenizer, [prompt], strategy, max_new_tokens=max_new_tokens, seed=seed)
    return rows[0]["text"]


def next_token_figure(model, tokenizer, prompt: str, temperature: float, top_k: int, top_p: float,
                      continuation: str = "", num_tokens: int = 12):
    """Bar chart of the next token's probabilities after ``prompt``, the ones sampling may draw highlighted.

    Temperature scales the logits (0: greedy, only the likeliest token); top-k and top-p are applied
    with transformers' own ``TopKLogitsWarper`` and ``TopPLogitsWarper``, as ``generate`` applies them.
    ``continuation`` (one generation with these settings) is written under the bars. The playground's
    static picture of its current settings. Introduced in ``07_evaluation.ipynb``.
    """
    import textwrap

    import torch
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    decoding_kwargs(temperature, top_k, top_p)  # the same checks as the generation itself
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids).logits[0, -1].float().cpu()
    scaled = logits / (temperature if temperature > 0 else 1.0)
    if temperature == 0:
        kept = torch.zeros_like(scaled, dtype=torch.bool)
        kept[scaled.argmax()] = True
    else:
        warped = scaled[None]
        if top_k > 0:
            warped = TopKLogitsWarper(int(top_k))(None, warped)
        if top_p < 1.0:
            warped = TopPLogitsWarper(float(top_p))(None, warped)
        kept = torch.isfinite(warped[0])
    probs = torch.softmax(scaled, dim=-1)
    top = probs.topk(num_tokens)
    labels = [repr(tokenizer.decode([int(i)])) for i in top.indices]
    colors = ["tab:blue" if kept[int(i)] else "lightgray" for i in top.indices]
    fig, ax = plt.subplots(figsize=(7.0, 3.6), dpi=plots.DPI)
    ax.bar(range(num_tokens), top.values.numpy(), color=colors)
    ax.set_xticks(range(num_tokens), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("probability (after temperature)")
    mode = "greedy" if temperature == 0 else f"temperature {temperature:g}, top-k {top_k or 'off'}, top-p {top_p:g}"
    count = int(kept.sum())
    drawn = f"{count:,} token{'' if count == 1 else 's'} can be drawn"
    ax.set_title(f"{mode}: {drawn} (blue); the {num_tokens} likeliest shown", fontsize=9)
    if continuation:
        fig.text(0.01, -0.02, textwrap.fill(" ".join((prompt + continuation).split()), 110), fontsize=8, va="top")
    fig.tight_layout()
    plt.close(fig)  # shown through a display handle, not again at the end of the cell
    return fig


def _playground_controls(ipywidgets, prompt: str, temperature: float, top_k: int, top_p: float,
                         max_new_tokens: int, seed: int, limit: int) -> tuple:
    """The playground's prompt box, sliders and seed box, set to the given values; the max-tokens
    slider stays inside the model's ``limit`` positions."""
    wide = {"description_width": "initial"}
    return (
        ipywidgets.Textarea(value=prompt, description="prompt", layout=ipywidgets.Layout(width="95%")),
        ipywidgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature (0 = greedy)",
                               style=wide),
        ipywidgets.IntSlider(value=top_k, min=0, max=200, description="top-k (0 = off)", style=wide),
        ipywidgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p (1 = off)", style=wide),
        ipywidgets.IntSlider(value=min(max_new_tokens, limit - 1), min=1, max=min(200, limit - 1),
                             description="max tokens", style=wide),
        ipywidgets.IntText(value=seed, description="seed", layout=ipywidgets.Layout(width="160px")),
    )


def generation_playground(
    model,
    tokenizer,
    prompt: str = "KING.\nWhat news, my lord?",
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.9,
    seed: int = 0,
):
    """Prompt box, temperature / top-k / top-p / max-tokens sliders, a seed, a Generate button.

    First displays :func:`next_token_figure` for the given settings with one generation under it,
    an ordinary output of the cell that GitHub and nbviewer show; each Generate redraws it.
    Returns an ``ipywidgets.VBox`` (display it as a cell's last value); each click writes the
    prompt and its continuation into the box's output area, or the reason it could not
    generate (a prompt too long for the model, say). Without ipywidgets it prints one
    generation with the given settings and returns ``None``. Building it never needs a
    frontend, so a headless run or GitHub shows the widget's text form instead of failing.

    Introduced in ``07_evaluation.ipynb``.
    """
    from IPython.display import display


    text = generate_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed)
    handle = display(next_token_figure(model, tokenizer, prompt, temperature, top_k, top_p, text), display_id=True)
    try:
        import ipywidgets
    except ImportError:
        print("ipywidgets is not installed (pip install ipywidgets); one generation with these settings instead:")
        print(prompt + text)
        return None
    prompt_box, temperature_slider, top_k_slider, top_p_slider, tokens_slider, seed_box = _playground_controls(
        ipywidgets, prompt, temperature, top_k, top_p, max_new_tokens, seed, max_context(model) or 1024)
    button = ipywidgets.Button(description="Generate", button_style="primary")
    output = ipywidgets.Output(layout=ipywidgets.Layout(border="1px solid #ccc", min_height="4em"))
    output.append_stdout("Press Generate.\n")

    def on_click(_=None) -> None:
        output.outputs = ()
        output.append_stdout("generating ...\n")
        try:
            text = generate_text(
                model, tokenizer, prompt_box.value, tokens_slider.value, temperature_slider.value,
                top_k_slider.value, top_p_slider.value, seed_box.value,
            )
            message = prompt_box.value + text
            if handle is not None:  # None outside IPython: nothing to redraw
                handle.update(next_token_figure(model, tokenizer, prompt_box.value, temperature_slider.value,
                                                top_k_slider.value, top_p_slider.value, text))
        except ValueError as error:  # a prompt too long or empty: say so in the output, never raise
            message = f"could not generate: {error}"
        output.outputs = ()
        output.append_stdout(message + "\n")

    button.on_click(on_click)
    rows = [(temperature_slider, top_k_slider), (top_p_slider, tokens_slider), (seed_box, button)]
    return ipywidgets.VBox([prompt_box, *(ipywidgets.HBox(list(row)) for row in rows), output])
