"""Notebook 07's playground and exercise checks: decoding settings, generation, the widget without a frontend.

References come from outside the code under test: a greedy loop written here with the model's own
forward pass, transformers' ``generate``, and the windows counted by walking the text.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from helpers import exercises, widgets
from helpers.evaluation import DECODING_STRATEGIES, generate_samples
from tests.notebook_code import notebook_definitions

next_token_figure = notebook_definitions("07_evaluation.ipynb")["next_token_figure"]  # 07 writes it in a cell

PROMPT = "KING.\nWhat news, my lord?"
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def model(random_gpt2):
    return random_gpt2(n_layer=1, n_embd=16, n_positions=32, initializer_range=0.2)  # peaked logits: greedy is stable


def greedy_reference(model, tokenizer, prompt: str, num_tokens: int) -> str:
    """Greedy decoding written out: append the argmax of the last position's logits, one token at a time."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(num_tokens):
            next_id = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0, -num_tokens:])


def find(widget, kind: str, description: str | None = None):
    """The first widget of class ``kind`` (and ``description``) inside ``widget``, depth first."""
    if type(widget).__name__ == kind and (description is None or widget.description.startswith(description)):
        return widget
    for child in getattr(widget, "children", ()):
        found = find(child, kind, description)
        if found is not None:
            return found
    return None


def output_text(output) -> str:
    return "".join(item.get("text", "") for item in output.outputs)


# ---------------------------------------------------------------- decoding settings


def test_temperature_zero_is_greedy():
    assert widgets.decoding_kwargs(0.0, top_k=50, top_p=0.5) == dict(do_sample=False, num_beams=1)


def test_sampling_settings_pass_through_with_filters_off_by_zero_and_one():
    kwargs = widgets.decoding_kwargs(0.7, top_k=0, top_p=1.0)
    assert kwargs == dict(do_sample=True, temperature=0.7, top_k=0, top_p=1.0)


@pytest.mark.parametrize(
    "temperature, top_k, top_p, word",
    [(-0.1, 0, 0.9, "temperature"), (0.8, -1, 0.9, "top_k"), (0.8, 2.5, 0.9, "top_k"), (0.8, 0, 0.0, "top_p"),
     (0.8, 0, 1.5, "top_p")],
)
def test_bad_settings_name_the_setting(temperature, top_k, top_p, word):
    with pytest.raises(ValueError, match=word):
        widgets.decoding_kwargs(temperature, top_k, top_p)


# ---------------------------------------------------------------- generation


def test_greedy_matches_a_written_out_argmax_loop(model, tokenizer):
    text = widgets.generate_text(model, tokenizer, PROMPT, NEW_TOKENS, temperature=0.0)
    assert text == greedy_reference(model, tokenizer, PROMPT, NEW_TOKENS)


def test_top_k_one_is_greedy_at_any_temperature(model, tokenizer):
    text = widgets.generate_text(model, tokenizer, PROMPT, NEW_TOKENS, temperature=1.5, top_k=1, top_p=1.0, seed=3)
    assert text == greedy_reference(model, tokenizer, PROMPT, NEW_TOKENS)


def test_sampling_matches_transformers_generate_with_the_same_seed(model, tokenizer):
    text = widgets.generate_text(model, tokenizer, PROMPT, NEW_TOKENS, temperature=0.9, top_k=20, top_p=0.8, seed=5)
    torch.manual_seed(5)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    out = model.generate(**inputs, do_sample=True, temperature=0.9, top_k=20, top_p=0.8, max_new_tokens=NEW_TOKENS,
                         min_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.eos_token_id)
    assert text == tokenizer.decode(out[0, inputs.input_ids.shape[1]:])


def test_playground_settings_reproduce_the_table_strategy(model, tokenizer):
    table = generate_samples(model, tokenizer, [PROMPT], {"t": DECODING_STRATEGIES["temperature 0.7"]},
                             max_new_tokens=NEW_TOKENS, seed=2)
    text = widgets.generate_text(model, tokenizer, PROMPT, NEW_TOKENS, temperature=0.7, top_k=0, top_p=1.0, seed=2)
    assert text == table[0]["text"]


# ---------------------------------------------------------------- the widget, headless


def test_generate_button_writes_the_continuation(model, tokenizer):
    box = widgets.generation_playground(model, tokenizer, next_token_figure, prompt=PROMPT, max_new_tokens=NEW_TOKENS, seed=1)
    find(box, "FloatSlider", "temperature").value = 0.0
    find(box, "Button").click()
    assert output_text(find(box, "Output")) == PROMPT + greedy_reference(model, tokenizer, PROMPT, NEW_TOKENS) + "\n"


def test_a_prompt_too_long_is_a_message_not_an_exception(model, tokenizer):
    box = widgets.generation_playground(model, tokenizer, next_token_figure, prompt=PROMPT, max_new_tokens=NEW_TOKENS)
    find(box, "Textarea").value = "word " * 40  # longer than the model's 32 positions
    find(box, "Button").click()
    text = output_text(find(box, "Output"))
    assert text.startswith("could not generate") and "positions" in text


def test_without_ipywidgets_it_prints_one_generation(model, tokenizer, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets now raises ImportError
    result = widgets.generation_playground(model, tokenizer, next_token_figure, prompt=PROMPT, max_new_tokens=NEW_TOKENS, temperature=0)
    assert result is None
    assert PROMPT + greedy_reference(model, tokenizer, PROMPT, NEW_TOKENS) in capsys.readouterr().out


# ---------------------------------------------------------------- exercise checks


def count_windows_by_walking(num_tokens: int, context_len: int, stride: int) -> int:
    begin, windows = 0, 0
    while True:
        windows += 1
        if begin + context_len >= num_tokens:
            return windows
        begin += stride


def test_exercise_checks_accept_right_answers(capsys):
    nll = torch.tensor(exercises.PPL_EXERCISE_NLL_SUM, dtype=torch.float64)
    exercises.check_perplexity_from_nll(torch.exp(nll / exercises.PPL_EXERCISE_TOKENS).item())
    exercises.check_window_count(count_windows_by_walking(**exercises.WINDOW_EXERCISE))
    out = capsys.readouterr().out
    assert out.count(exercises.CORRECT) == 2, out


def test_exercise_checks_reject_wrong_answers_with_a_hint(capsys):
    mean_nll = exercises.PPL_EXERCISE_NLL_SUM / exercises.PPL_EXERCISE_TOKENS
    exercises.check_perplexity_from_nll(mean_nll)  # forgot the exp
    exercises.check_perplexity_from_nll(math.exp(exercises.PPL_EXERCISE_NLL_SUM / (exercises.PPL_EXERCISE_TOKENS + 1)))
    n, context, stride = (exercises.WINDOW_EXERCISE[k] for k in ("num_tokens", "context_len", "stride"))
    exercises.check_window_count(n // stride)  # as if every window moved a full stride to the end
    exercises.check_window_count(None)
    out = capsys.readouterr().out
    assert out.count(exercises.WRONG) == 3 and exercises.NOT_DONE in out and "Hint" in out, out


def test_early_stop_check_accepts_the_rule_and_rejects_near_misses(capsys):
    def right(valid, patience):  # written from the exercise's statement
        best, waited = None, 0
        for step, loss in valid:
            if best is None or loss < best[1]:
                best, waited = (step, loss), 0
            elif (waited := waited + 1) >= patience:
                break
        return best[0]

    exercises.check_early_stop(right)
    exercises.check_early_stop(lambda valid, patience: min(valid, key=lambda p: p[1])[0])  # never stops early
    exercises.check_early_stop(lambda valid, patience: valid[-1][0])  # the last checkpoint
    exercises.check_early_stop(lambda valid, patience: 1 / 0)
    exercises.check_early_stop(None)
    out = capsys.readouterr().out
    assert out.count(exercises.CORRECT) == 1 and out.count(exercises.WRONG) == 3 and exercises.NOT_DONE in out, out
    assert "ZeroDivisionError" in out and "Hint" in out


def test_open_experiment_checks_read_properties_of_the_outcome(capsys):
    from helpers.evaluation import Interval, chunk_tokens

    ids = torch.zeros(4096, dtype=torch.long)
    good = {1024: (len(chunk_tokens(ids, 1024)), Interval(-0.2, -0.3, -0.1)), 256: (len(chunk_tokens(ids, 256)),
                                                                                   Interval(-0.2, -0.25, -0.15))}
    exercises.check_chunk_experiment(good, 512, 4096)
    exercises.check_chunk_experiment({1024: good[1024]}, 512, 4096)  # one length missing
    exercises.check_chunk_experiment({**good, 256: (3, good[256][1])}, 512, 4096)  # wrong number of chunks
    summary = [{"strategy": s, "distinct_1": 0.5, "distinct_2": d, "repetition_rate": 0.1} for s, d in (("a", 0.4), ("b", 0.9))]
    exercises.check_temperature_experiment(summary, {"a": {}, "b": {}})
    exercises.check_temperature_experiment(summary[:1], {"a": {}, "b": {}})
    rows = [{"group": g, "difference": 0.0 if g == "king" else d} for d in (-1.0, -1.1) for g in ("king", "queen")]
    exercises.check_bias_experiment(rows, ("king", "queen"))
    exercises.check_bias_experiment(rows, ("man", "woman"))
    out = capsys.readouterr().out
    assert out.count(exercises.CORRECT) == 3 and out.count(exercises.WRONG) == 4, out
    assert "mostly an offset" in out


# ---------------------------------------------------------------- the static figure of the playground


class FakeDisplay:
    """Stands in for IPython's display: records what was shown and every update of its handle."""

    def __init__(self):
        self.shown = []

    def __call__(self, obj, display_id=False):
        self.shown.append(obj)
        return self

    def update(self, obj):
        self.shown.append(obj)


def test_the_playground_first_shows_its_default_state_as_a_figure(model, tokenizer, monkeypatch):
    from matplotlib.figure import Figure

    fake = FakeDisplay()
    monkeypatch.setattr("IPython.display.display", fake)
    box = widgets.generation_playground(model, tokenizer, next_token_figure, prompt=PROMPT, max_new_tokens=NEW_TOKENS, temperature=0.0)
    assert len(fake.shown) == 1 and isinstance(fake.shown[0], Figure)
    figure = fake.shown[0]
    assert figure.axes[0].get_title().startswith("greedy: 1 token can be drawn")
    written = " ".join(text.get_text() for text in figure.texts)
    assert " ".join(written.split()) == " ".join((PROMPT + greedy_reference(model, tokenizer, PROMPT, NEW_TOKENS)).split())
    find(box, "FloatSlider", "temperature").value = 0.9
    find(box, "IntSlider", "top-k").value = 5
    find(box, "Button").click()
    assert len(fake.shown) == 2 and "5 tokens can be drawn" in fake.shown[1].axes[0].get_title()


def test_the_figure_keeps_what_top_p_keeps(model, tokenizer):
    p = 0.3
    figure = next_token_figure(model, tokenizer, PROMPT, temperature=1.0, top_k=0, top_p=p)
    with torch.no_grad():
        probs = torch.softmax(model(tokenizer(PROMPT, return_tensors="pt").input_ids).logits[0, -1], dim=-1)
    cumulative = probs.sort(descending=True).values.cumsum(0)
    expected = int((cumulative < p).sum()) + 1  # the smallest set of likeliest tokens whose probabilities reach p
    assert f": {expected:,} token" in figure.axes[0].get_title()
