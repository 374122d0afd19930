"""Exercise checks of ``07_evaluation.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helpers.exercises.core import CORRECT, WRONG, _check, _not_done

PPL_EXERCISE_NLL_SUM = 2_310.0  # nats, summed over the scored tokens
PPL_EXERCISE_TOKENS = 840  # tokens scored
WINDOW_EXERCISE = dict(num_tokens=1_000, context_len=128, stride=32)


def check_perplexity_from_nll(answer) -> None:
    """Perplexity of ``PPL_EXERCISE_TOKENS`` tokens whose NLL sums to ``PPL_EXERCISE_NLL_SUM`` nats."""
    _check(
        "perplexity from a summed NLL",
        answer,
        np.exp(PPL_EXERCISE_NLL_SUM / PPL_EXERCISE_TOKENS),
        "divide the summed NLL by the number of scored tokens (the mean loss in nats), then take exp of it.",
        atol=1e-3,
    )


def check_window_count(answer) -> None:
    """Windows a sliding-window evaluation of ``WINDOW_EXERCISE`` needs (the last one ends at the text's end)."""
    n, context, stride = (WINDOW_EXERCISE[key] for key in ("num_tokens", "context_len", "stride"))
    # Windows start at 0, stride, 2·stride, ...; the first to reach the end starts at or after n - context.
    _check(
        "number of windows",
        answer,
        1 + int(np.ceil((n - context) / stride)),
        "the windows start every `stride` tokens from 0, and the last one is the first whose start + context_len "
        "reaches the end of the text; count the starts.",
        atol=0.5,
    )


BPB_EXERCISE_CASES = (  # (total NLL in nats, original text): plain ASCII, accents (bytes != characters), runs of spaces
    (1_000.0, "To be, or not to be, that is the question:"),
    (250.0, "Oph\u00e9lie: \u00ab \u00d4 ciel ! \u00bb"),
    (12.5, "a  b\n\nc"),
)


def check_bits_per_byte(fn: Callable | None) -> None:
    """Exercise 3 of ``07_evaluation.ipynb``: ``fn(nll_sum, text)`` returns the bits per byte of ``text``.

    Compared with :func:`helpers.evaluation.tokenizer_free_metrics` (lm-evaluation-harness's
    convention, tested against a hand computation) on texts where bytes and characters differ.
    """
    from helpers.evaluation import NLLResult, tokenizer_free_metrics

    name = "bits per byte"
    if _not_done(name, fn):
        return
    hint = ("convert nats to bits (divide by ln 2) and divide by the UTF-8 bytes of the text, "
            "len(text.encode('utf-8')), which is more than len(text) when it has accents.")
    for nll_sum, text in BPB_EXERCISE_CASES:
        expected = tokenizer_free_metrics({"text": NLLResult(nll_sum, len(text))}, {"text": text})["bits_per_byte"]
        try:
            got = float(fn(nll_sum, text))
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: your function raised or returned no number ({type(error).__name__}: {error}). "
                  f"Hint: {hint}")
            return
        if not abs(got - expected) <= 1e-9 * max(1.0, expected):
            print(f"{WRONG}: {name}: for {nll_sum} nats on {text!r} you gave {got:.6g}, expected {expected:.6g}. "
                  f"Hint: {hint}")
            return
    print(f"{CORRECT}: {name} equals lm-evaluation-harness's convention on {len(BPB_EXERCISE_CASES)} texts, "
          "accented ones included")
