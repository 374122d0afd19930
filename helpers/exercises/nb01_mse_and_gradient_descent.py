"""Exercise checks of ``01_mse_and_gradient_descent.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helpers.exercises.core import CORRECT, WRONG, _check, _not_done

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


def _cross_entropy_reference() -> tuple[float, np.ndarray]:
    """``F.cross_entropy`` of the exercise's logits and target, and its gradient from ``torch.autograd``."""
    import torch
    import torch.nn.functional as F

    z = torch.tensor(CE_EXERCISE_LOGITS, dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy(z[None], torch.tensor([CE_EXERCISE_TARGET]))
    loss.backward()
    return loss.item(), z.grad.numpy()


def check_cross_entropy(answer) -> None:
    """Cross-entropy (natural log) of ``CE_EXERCISE_LOGITS`` with target id ``CE_EXERCISE_TARGET`` (a number)."""
    loss, _ = _cross_entropy_reference()
    _check(
        "cross-entropy of one next-token prediction",
        answer,
        loss,
        "softmax the logits (exp, then divide by the sum), take the probability of the target id, "
        "then −log of it (natural log).",
        atol=1e-4,
    )


def check_cross_entropy_grad(answer) -> None:
    """Gradient of that cross-entropy with respect to the 5 logits (shape (5,))."""
    _, grad = _cross_entropy_reference()
    _check(
        "gradient of the cross-entropy wrt the logits",
        answer,
        grad,
        "the gradient is softmax(z) − onehot(target): every probability, minus 1 at the target id.",
        atol=1e-4,
    )


_LINEAR_BACKWARD_SHAPES = ((1, 1, 1), (4, 3, 2), (7, 5, 1), (16, 8, 8))  # (N, D_in, D_out)


def check_linear_backward(fn: Callable | None) -> None:
    """Exercise 6 of ``01_mse_and_gradient_descent.ipynb``: the backward pass of a linear layer.

    ``fn(x, W, grad_out)`` returns ``(grad_x, grad_W, grad_b)`` for ``out = x @ W + b``; compared
    with ``torch.autograd`` on random inputs of several shapes.
    """
    import torch

    name = "backward pass of a linear layer"
    if _not_done(name, fn):
        return
    hint = ("each input's gradient has that input's shape: grad_x = grad_out @ W.T, grad_W = x.T @ grad_out, "
            "grad_b = grad_out summed over the examples (axis 0).")
    rng = np.random.default_rng(0)
    worst = 0.0
    for n, d_in, d_out in _LINEAR_BACKWARD_SHAPES:
        x, W, b, grad_out = (rng.normal(size=shape) for shape in ((n, d_in), (d_in, d_out), (d_out,), (n, d_out)))
        tensors = [torch.tensor(a, requires_grad=True) for a in (x, W, b)]
        (tensors[0] @ tensors[1] + tensors[2]).backward(torch.tensor(grad_out))
        try:
            got = fn(x.copy(), W.copy(), grad_out.copy())
            arrays = [np.asarray(g, dtype=np.float64) for g in got]
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: with x {x.shape}, W {W.shape} your function raised {type(error).__name__}: "
                  f"{error}. Hint: {hint}")
            return
        if len(arrays) != 3:
            print(f"{WRONG}: {name}: return three arrays (grad_x, grad_W, grad_b), not {len(arrays)}. Hint: {hint}")
            return
        for label, ours, tensor in zip(("grad_x", "grad_W", "grad_b"), arrays, tensors, strict=True):
            reference = tensor.grad.numpy()
            if ours.shape != reference.shape:
                print(f"{WRONG}: {name}: {label} should have shape {reference.shape}, got {ours.shape}. Hint: {hint}")
                return
            off_by = float(np.max(np.abs(ours - reference)))
            if off_by > 1e-8:
                print(f"{WRONG}: {name}: {label} is off by up to {off_by:.3g} with x {x.shape}, W {W.shape}. Hint: {hint}")
                return
            worst = max(worst, off_by)
    print(f"{CORRECT}: {name} (max |difference| from torch.autograd over {len(_LINEAR_BACKWARD_SHAPES)} shapes: {worst:.1e})")
