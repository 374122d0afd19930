"""Interactive explorers for the notebooks (ipywidgets), each safe where no widget frontend exists.

Where widgets do not render (GitHub, a headless run) a notebook shows a static figure of the
same thing beside the widget, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable

from helpers.evaluation import generate_samples, max_context


def learning_rate_explorer(figure: Callable[[float, int], object], lr: float = 0.1, num_steps: int = 10):
    """Sliders for the learning rate α and the number of steps that redraw ``figure(lr, num_steps)``.

    01's ``figure`` runs the learner's own gradient descent and draws its path. The figure of the
    starting state (``lr``, ``num_steps``) is an ordinary output of the cell, so a reader without a
    live kernel (GitHub, nbviewer) sees it; moving a slider redraws that same figure in place.
    Returns the sliders (display them as the cell's last value), or ``None`` when ipywidgets is
    not installed. Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    from IPython.display import display

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
    figure: Callable,
    prompt: str = "KING.\nWhat news, my lord?",
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.9,
    seed: int = 0,
):
    """Prompt box, temperature / top-k / top-p / max-tokens sliders, a seed, a Generate button (07).

    First displays ``figure(model, tokenizer, prompt, temperature, top_k, top_p, continuation)``
    for the given settings, an ordinary output that GitHub and nbviewer show; each Generate redraws
    it and writes the continuation, or why there is none (a prompt too long, say), under the box.
    Returns the ``ipywidgets.VBox``; without ipywidgets, prints one generation and returns ``None``.
    """
    from IPython.display import display

    text = generate_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed)
    handle = display(figure(model, tokenizer, prompt, temperature, top_k, top_p, text), display_id=True)
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
                handle.update(figure(model, tokenizer, prompt_box.value, temperature_slider.value,
                                                top_k_slider.value, top_p_slider.value, text))
        except ValueError as error:  # a prompt too long or empty: say so in the output, never raise
            message = f"could not generate: {error}"
        output.outputs = ()
        output.append_stdout(message + "\n")

    button.on_click(on_click)
    rows = [(temperature_slider, top_k_slider), (top_p_slider, tokens_slider), (seed_box, button)]
    return ipywidgets.VBox([prompt_box, *(ipywidgets.HBox(list(row)) for row in rows), output])
