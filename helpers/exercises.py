"""Exercise checks with automatic feedback: ``check_...(answer)`` prints a verdict, never a traceback.

Introduced in ``01_mse_and_gradient_descent.ipynb``; later notebooks add their own checks
with the same core, :func:`_check`. Each check prints one of:

* ``✅ correct`` (and how close the answer was to the reference),
* ``❌ not yet`` with how far off the answer is and a hint,
* ``⏳ not done yet`` while the answer is still ``None`` or ``...`` (the workshop build
  replaces the solutions with ``answer = None  # TODO``).

The references are computed here with plain NumPy (or :mod:`helpers.by_hand`), never typed in.
"""

from __future__ import annotations

import numpy as np

from helpers import by_hand

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
    if answer is None or answer is Ellipsis:
        print(f"{NOT_DONE}: {name}")
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


# --- 01_mse_and_gradient_descent.ipynb -----------------------------------------------------

MSE_EXERCISE_Y = (2.0, 7.0, 1.0, 8.0, 2.0, 8.0)
MSE_EXERCISE_Y_HAT = (3.0, 5.0, 1.0, 9.0, 2.0, 6.0)
CE_EXERCISE_LOGITS = (2.0, 1.0, 0.1, -1.0, 0.5)
CE_EXERCISE_TARGET = 2


def check_mse(answer) -> None:
    """MSE of ``MSE_EXERCISE_Y`` against ``MSE_EXERCISE_Y_HAT`` (a number)."""
    y, y_hat = np.array(MSE_EXERCISE_Y), np.array(MSE_EXERCISE_Y_HAT)
    _check(
        "MSE of the second pair",
        answer,
        np.mean((y - y_hat) ** 2),
        "square each error y_i − ŷ_i, add them up, divide by the number of samples N (not N − 1).",
    )


def check_theta3(answer) -> None:
    """θ3 of gradient descent on J(w) = (w1−1)² + (w2−2)² from θ0 = [0, 0] with α = 0.1 (shape (2,))."""
    theta = np.zeros(2)
    for _ in range(3):
        theta = theta - 0.1 * 2.0 * (theta - np.array([1.0, 2.0]))
    _check(
        "θ3 with α = 0.1",
        answer,
        theta,
        "apply θ ← θ − α·∇J(θ) three times from [0, 0], with ∇J(θ) = [2(w1 − 1), 2(w2 − 2)]; "
        "or use θt = [1, 2]·(1 − 0.8^t).",
    )


def check_largest_stable_lr(answer) -> None:
    """The learning rate on the boundary: gradient descent on J converges below it and diverges above it."""
    # |1 - 2α| < 1  <=>  0 < α < 1: the boundary is the α with 1 - 2α = -1.
    _check(
        "largest stable learning rate",
        answer,
        (1.0 - (-1.0)) / 2.0,
        "each step multiplies the distance to the minimum by (1 − 2α); find where |1 − 2α| reaches 1 "
        "on the negative side.",
        atol=1e-3,
    )


def check_cross_entropy(answer) -> None:
    """Cross-entropy (natural log) of ``CE_EXERCISE_LOGITS`` with target id ``CE_EXERCISE_TARGET`` (a number)."""
    z = np.array(CE_EXERCISE_LOGITS)
    _check(
        "cross-entropy of one next-token prediction",
        answer,
        -(z[CE_EXERCISE_TARGET] - np.log(np.sum(np.exp(z)))),
        "softmax the logits (exp, then divide by the sum), take the probability of the target id, "
        "then −log of it (natural log).",
        atol=1e-4,
    )


def check_cross_entropy_grad(answer) -> None:
    """Gradient of that cross-entropy with respect to the 5 logits (shape (5,))."""
    z = np.array(CE_EXERCISE_LOGITS)
    _check(
        "gradient of the cross-entropy wrt the logits",
        answer,
        by_hand.softmax(z) - by_hand.one_hot([CE_EXERCISE_TARGET], z.size)[0],
        "the gradient is softmax(z) − onehot(target): every probability, minus 1 at the target id.",
        atol=1e-4,
    )
