"""Exercise checks of ``11_iteration.ipynb``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from helpers.exercises.core import CORRECT, WRONG, _not_done, _unanswered

GATE_EXERCISE = {"margin": 0.05, "tolerance": 0.02, "seed": 0}  # the rule exercise 1 of 11 asks for


def _scores(log_ppls) -> dict:
    """{chunk: NLLResult} of 500-token chunks with these per-chunk log-perplexities."""
    from helpers.evaluation import NLLResult

    return {f"chunk_{i:03d}": NLLResult(500 * float(v), 500) for i, v in enumerate(log_ppls)}


def _interval_gate_cases() -> list[tuple[dict, dict]]:
    """(candidate, current) score dicts: clear wins, wins by the point estimate only, regressions, a diverged run."""
    rng = np.random.default_rng(11)
    base_new, base_old = np.log(200.0) + rng.normal(0, 0.3, 16), np.log(100.0) + rng.normal(0, 0.3, 16)
    current = {"new_data": _scores(base_new), "old_data": _scores(base_old)}
    cases = []
    for new_shift, new_noise in ((-0.15, 0.0), (-0.08, 0.0), (-0.07, 0.15), (-0.03, 0.0), (0.02, 0.05)):
        for old_shift, old_noise in ((0.0, 0.0), (0.01, 0.0), (0.01, 0.06), (0.05, 0.0)):
            new = base_new + new_shift + rng.normal(0, new_noise, 16)
            old = base_old + old_shift + rng.normal(0, old_noise, 16)
            cases.append(({"new_data": _scores(new), "old_data": _scores(old)}, current))
    cases.append(({"new_data": _scores(base_new + np.inf), "old_data": _scores(base_old)}, current))
    return cases


def check_interval_gate(fn: Callable | None) -> None:
    """Exercise 1 of ``11_iteration.ipynb``: the gate's decision with intervals, ``fn(candidate, current) -> bool``.

    ``candidate`` and ``current`` map ``"new_data"`` and ``"old_data"`` to ``{chunk: NLLResult}``.
    Compared with ``helpers.registry.gate`` (margin 5 %, tolerance 2 %, seed 0, smoke test passing)
    on cases where the point estimate and the interval disagree, and on a diverged candidate.
    """
    if _not_done("write my_gate, then pass it to check_interval_gate", fn):
        return
    from helpers.registry import gate

    hint = ("for each of 'new_data' and 'old_data' take paired_bootstrap(current[key], candidate[key], seed=0)"
            ".relative; promote only if the new data's .high <= -0.05 and the old domain's .high <= 0.02: the whole "
            "interval, not the point estimate, must clear each bound.")
    cases = _interval_gate_cases()
    for candidate, current in cases:
        decision = gate(candidate, current, smoke_test=lambda: True, **GATE_EXERCISE)
        try:
            got = fn(candidate, current)
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: my_gate raised {type(error).__name__}: {error}. Hint: {hint}")
            return
        if not isinstance(got, (bool, np.bool_)):
            print(f"{WRONG}: my_gate returned {got!r}; return True (promote) or False (keep). Hint: {hint}")
            return
        if bool(got) != decision.promote:
            new, old = decision.rows[0], decision.rows[1]
            print(f"{WRONG}: for a candidate at {new.relative:+.1%} {new.interval} on the new data and "
                  f"{old.relative:+.1%} {old.interval} on the old domain the gate says "
                  f"{'promote' if decision.promote else 'keep the current version'}. Hint: {hint}")
            return
    print(f"{CORRECT}: the same decision as helpers.registry.gate on all {len(cases)} cases, including those where "
          "the point estimate clears a bound and the interval does not")


def _drift_cases() -> list[tuple[list[float], float, int]]:
    rng = np.random.default_rng(5)
    cases = [([10.0, 30.0, 30.0, 30.0], 20.0, 3), ([30.0, 30.0, 10.0, 30.0], 20.0, 3), ([], 20.0, 3),
             ([20.0, 20.0, 20.0], 20.0, 3), ([25.0, 25.0], 20.0, 3), ([25.0, 10.0, 25.0], 20.0, 1),
             ([25.0, 26.0, 10.0, 25.0, 26.0], 20.0, 2)]
    cases += [(list(rng.choice([10.0, 30.0], size=8)), 20.0, int(rng.integers(1, 4))) for _ in range(30)]
    return cases


def check_sustained_drift(fn: Callable | None) -> None:
    """Exercise 3 of ``11_iteration.ipynb``: ``fn(perplexities, threshold, run=3) -> bool``.

    True when at least ``run`` consecutive windows lie strictly above ``threshold`` (as
    ``drift_check`` flags one window); compared with the rule on fixed and random sequences.
    """
    if _not_done("write sustained_drift, then pass it to check_sustained_drift", fn):
        return
    hint = ("walk the windows in order, count how many in a row lie above the threshold (reset the count to 0 at a "
            "window at or below it), and return True as soon as the count reaches run; an empty list is False.")
    cases = _drift_cases()
    for values, threshold, run in cases:
        longest, count = 0, 0
        for value in values:
            count = count + 1 if value > threshold else 0
            longest = max(longest, count)
        expected = longest >= run
        try:
            got = fn(list(values), threshold, run)
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: sustained_drift raised {type(error).__name__}: {error}. Hint: {hint}")
            return
        if not isinstance(got, (bool, np.bool_)) or bool(got) != expected:
            print(f"{WRONG}: sustained_drift({values}, {threshold}, run={run}) returned {got!r}; expected "
                  f"{expected}. Hint: {hint}")
            return
    print(f"{CORRECT}: the same answer as the rule on all {len(cases)} sequences of windows")


def check_weights_sha256(answer, path) -> None:
    """Exercise 2 of ``11_iteration.ipynb``: the sha256 (hex) of the file at ``path``, as ``hashlib`` computes it."""
    import hashlib

    if _unanswered(f"sha256 of {Path(path).name}", answer):
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
