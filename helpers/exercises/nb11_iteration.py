"""Exercise checks of ``11_iteration.ipynb``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from helpers.exercises.core import CORRECT, NOT_DONE, WRONG, _check, _not_done


def check_relative_change(answer, candidate: float, current: float) -> None:
    """The relative change of a metric from ``current`` to ``candidate`` (what the gate's checks compute)."""
    _check(
        "relative change of the held-out perplexity",
        answer,
        candidate / current - 1,
        "divide the candidate's value by the current one and subtract 1 (positive means higher, i.e. worse "
        "for a perplexity).",
        atol=1e-9,
    )


GATE_EXERCISE = {"margin": 0.05, "tolerance": 0.02}  # the rule exercise 2 of 11 asks for


def _gate_cases() -> list[tuple[dict, dict]]:
    """(candidate, current) metric pairs around the rule's two thresholds, and a diverged run."""
    current = {"new_data_ppl": 200.0, "heldout_ppl": 100.0}
    cases = []
    for new in (150.0, 189.0, 190.0, 191.0, 200.0, 230.0, float("inf"), float("nan")):
        for held in (90.0, 100.0, 101.9, 102.0, 102.1, 140.0):
            cases.append(({"new_data_ppl": new, "heldout_ppl": held}, current))
    return cases


def check_gate_rule(fn: Callable | None) -> None:
    """Exercise 2 of ``11_iteration.ipynb``: a gate rule ``fn(candidate, current) -> bool`` on metric dicts.

    Promote when the new-data perplexity is at least 5 % lower and the held-out one at most 2 %
    higher; compared with ``helpers.registry.gate`` (smoke test passing) on cases at and around
    both thresholds, including a diverged (inf, nan) candidate.
    """
    if _not_done("write my_gate, then pass it to check_gate_rule", fn):
        return
    from helpers.registry import gate

    hint = ("promote only if candidate['new_data_ppl'] <= 0.95 * current['new_data_ppl'] and "
            "candidate['heldout_ppl'] <= 1.02 * current['heldout_ppl']; a comparison with nan is False, "
            "so write the rule as 'candidate <= threshold', not 'not candidate > threshold'.")
    cases = _gate_cases()
    for candidate, current in cases:
        expected = gate(candidate, current, smoke_test=lambda: True, **GATE_EXERCISE).promote
        try:
            got = fn(dict(candidate), dict(current))
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: my_gate raised {type(error).__name__}: {error}. Hint: {hint}")
            return
        if not isinstance(got, (bool, np.bool_)):
            print(f"{WRONG}: my_gate returned {got!r}; return True (promote) or False (keep). Hint: {hint}")
            return
        if bool(got) != expected:
            verdict = "promote" if expected else "keep the current version"
            print(f"{WRONG}: for new_data_ppl {candidate['new_data_ppl']} vs {current['new_data_ppl']} and "
                  f"heldout_ppl {candidate['heldout_ppl']} vs {current['heldout_ppl']} the gate says {verdict}. "
                  f"Hint: {hint}")
            return
    print(f"{CORRECT}: the same decision as helpers.registry.gate on all {len(cases)} cases around both thresholds")


def check_weights_sha256(answer, path) -> None:
    """Exercise 3 of ``11_iteration.ipynb``: the sha256 (hex) of the file at ``path``, as ``hashlib`` computes it."""
    import hashlib

    if answer is None or answer is Ellipsis:
        print(f"{NOT_DONE}: sha256 of {Path(path).name}")
        return
    hint = ("open the file in binary mode ('rb'), feed its bytes to hashlib.sha256() (read it in blocks for a "
            "large file) and take .hexdigest().")
    expected = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if not isinstance(answer, str):
        print(f"{WRONG}: the answer should be the hex string .hexdigest() returns, not a {type(answer).__name__}. "
              f"Hint: {hint}")
    elif answer.strip().lower() == expected:
        print(f"{CORRECT}: sha256 of {Path(path).name} is {expected[:12]}…, as hashlib computes it")
    else:
        print(f"{WRONG}: {answer[:12]}… is not the sha256 of {Path(path).name} (hashlib says {expected[:12]}…). "
              f"Hint: {hint}")
