"""The core every exercise check uses: the verdicts, reading an answer, comparing it, calling a learner's function.

Introduced in ``01_mse_and_gradient_descent.ipynb``; each notebook's checks live in ``nbNN_<notebook>.py`` beside this file.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CORRECT = "✅ correct"
NOT_DONE = "⏳ not done yet"
WRONG = "❌ not yet"


def _to_array(answer) -> np.ndarray | str:
    """The answer as a float array, or a sentence saying why it cannot be one."""
    if isinstance(answer, (str, bytes, bool, np.bool_, dict, set)):
        return f"the answer should be a number or an array of numbers, not a {type(answer).__name__}"
    try:
        if hasattr(answer, "detach"):  # a torch tensor
            answer = answer.detach().cpu().numpy()
        array = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        return f"the answer should be a number or an array of numbers; could not read a {type(answer).__name__}"
    if not np.all(np.isfinite(array)):
        return "the answer contains NaN or infinity; did something divide by zero or blow up?"
    return array


def _check(name: str, answer, expected, hint: str, atol: float = 1e-6) -> str:
    """Compare ``answer`` with ``expected`` within ``atol``, print the verdict, return ``"correct"``,
    ``"wrong"`` or ``"not done"``. Never raises: any problem with the answer becomes a hint.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    if _unanswered(name, answer):
        return "not done"
    try:
        expected = np.asarray(expected, dtype=np.float64)
        array = _to_array(answer)
        if isinstance(array, str):
            print(f"{WRONG}: {name}: {array}. Hint: {hint}")
            return "wrong"
        if array.shape != expected.shape and array.size == expected.size == 1:
            array = array.reshape(expected.shape)  # 1.2, [1.2] and np.array(1.2) are the same answer
        if array.shape != expected.shape:
            print(f"{WRONG}: {name}: expected shape {expected.shape}, got shape {array.shape}. Hint: {hint}")
            return "wrong"
        off_by = float(np.max(np.abs(array - expected))) if expected.size else 0.0
        if off_by <= atol:
            print(f"{CORRECT}: {name} (max |difference| from the reference: {off_by:.1e})")
            return "correct"
        print(f"{WRONG}: {name}: off by up to {off_by:.4g} (tolerance {atol:g}). Hint: {hint}")
        return "wrong"
    except Exception as error:  # a check must never crash a learner's notebook
        print(f"{WRONG}: {name}: could not check this answer ({type(error).__name__}). Hint: {hint}")
        return "wrong"


def _unanswered(name: str, answer) -> bool:
    """Print the "not done yet" line and return True while ``answer`` is still the stub's ``None`` or ``...``."""
    if answer is None or answer is Ellipsis:
        print(f"{NOT_DONE}: {name}")
        return True
    return False


def _not_done(name: str, fn) -> bool:
    """Like :func:`_unanswered`, for a function: also True (with a verdict) when ``fn`` is not callable."""
    if _unanswered(name, fn):
        return True
    if not callable(fn):
        print(f"{WRONG}: {name}: the answer should be a function (def ...), not a {type(fn).__name__}")
        return True
    return False


def _call(fn: Callable, args: tuple, hint: str):
    """``fn(*args)`` as a float tensor, or None after printing why it could not be used."""
    import torch

    try:
        result = fn(*args)
    except Exception as error:  # a learner's bug must not stop the notebook
        print(f"{WRONG}: your function raised {type(error).__name__}: {error}. Hint: {hint}")
        return None
    if isinstance(result, tuple):
        print(f"{WRONG}: your function returned a tuple of {len(result)}; return one tensor. Hint: {hint}")
        return None
    try:
        return torch.as_tensor(result).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError):
        print(f"{WRONG}: your function returned a {type(result).__name__}, not a tensor. Hint: {hint}")
        return None


def _schedule_gap(name: str, fn: Callable, cases, make_scheduler: Callable, reference: str, hint: str) -> float | None:
    """The largest |difference| between ``fn(step, peak_lr, warmup_steps, num_steps)`` and a scheduler, at every step.

    ``make_scheduler(peak_lr, warmup_steps, num_steps)`` returns ``(optimizer, scheduler)``; ``cases`` are
    ``(peak_lr, warmup_steps, num_steps)``. None after printing the first step where ``fn`` raises or differs
    from ``reference`` (04's and 05's warmup + cosine exercises).
    """
    worst = 0.0
    for peak_lr, warmup_steps, num_steps in cases:
        optimizer, scheduler = make_scheduler(peak_lr, warmup_steps, num_steps)
        for step in range(num_steps + 1):
            expected = scheduler.get_last_lr()[0]
            case = f"step {step} of {num_steps} (warmup {warmup_steps}, peak {peak_lr:g})"
            try:
                got = float(fn(step, peak_lr, warmup_steps, num_steps))
            except Exception as error:  # a learner's bug must not stop the notebook
                print(f"{WRONG}: {name}: at {case} your function raised {type(error).__name__}: {error}. Hint: {hint}")
                return None
            if not abs(got - expected) <= 1e-9 * peak_lr:
                print(f"{WRONG}: {name}: at {case} you give {got:.6g}, {reference} {expected:.6g}. Hint: {hint}")
                return None
            worst = max(worst, abs(got - expected))
            optimizer.step()
            scheduler.step()
    return worst
