"""Losses, gradients and gradient descent written out in plain NumPy: no autograd.

Introduced in ``01_mse_and_gradient_descent.ipynb``. Every function here is checked against
PyTorch (``torch.autograd``, ``mse_loss``, ``cross_entropy``, ``torch.optim.SGD``) in
``tests/test_by_hand.py``; :func:`compare` prints how close two results are, in the spirit
of the ``cmp()`` of Karpathy's micrograd lectures.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The minimum of the course's quadratic J(w) = (w1 - 1)^2 + (w2 - 2)^2.
QUADRATIC_MINIMUM = np.array([1.0, 2.0])


def _as_float_array(name: str, value) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity; check how it was computed")
    return array


def _same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")


# --- mean squared error -----------------------------------------------------------------


def mse(y, y_hat) -> float:
    r"""Mean squared error :math:`\frac{1}{N}\sum_i (y_i - \hat y_i)^2`.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    y, y_hat = _as_float_array("y", y), _as_float_array("y_hat", y_hat)
    _same_shape("y", y, "y_hat", y_hat)
    if y.size == 0:
        raise ValueError("y is empty; the mean of no errors is undefined")
    return float(np.mean((y - y_hat) ** 2))


def mse_grad_wrt_predictions(y, y_hat) -> np.ndarray:
    r"""Gradient of the MSE with respect to the predictions: :math:`\frac{2}{N}(\hat y - y)`.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    y, y_hat = _as_float_array("y", y), _as_float_array("y_hat", y_hat)
    _same_shape("y", y, "y_hat", y_hat)
    return 2.0 * (y_hat - y) / y.size


# --- linear regression y = X w + b ----------------------------------------------------------


def linear_predict(X, w, b: float) -> np.ndarray:
    """Predictions of the linear model :math:`\\hat y = X w + b` for ``X`` of shape (N, D).

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    X, w = _as_float_array("X", X), _as_float_array("w", w)
    if X.ndim != 2 or w.shape != (X.shape[1],):
        raise ValueError(f"X must have shape (N, D) and w shape (D,); got X {X.shape} and w {w.shape}")
    return X @ w + float(b)


def linear_mse_grad(X, y, w, b: float) -> tuple[np.ndarray, float]:
    r"""Gradient of :math:`\mathrm{MSE}(y, Xw + b)` with respect to ``w`` and ``b``.

    With residuals :math:`r = Xw + b - y`: :math:`\partial/\partial w = \frac{2}{N} X^\top r`
    and :math:`\partial/\partial b = \frac{2}{N}\sum_i r_i`. Returns ``(grad_w, grad_b)``.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    y = _as_float_array("y", y)
    residuals = linear_predict(X, w, b) - y
    n = y.shape[0]
    return 2.0 / n * (np.asarray(X, dtype=np.float64).T @ residuals), float(2.0 / n * residuals.sum())


# --- gradient descent -----------------------------------------------------------------------


def gradient_descent(
    grad_fn: Callable[[np.ndarray], np.ndarray], theta0, lr: float, num_steps: int, momentum: float = 0.0
) -> np.ndarray:
    r"""Run :math:`\theta_{t+1} = \theta_t - \alpha \nabla J(\theta_t)` and return every :math:`\theta_t`.

    Returns an array of shape ``(num_steps + 1, dim)``; row 0 is ``theta0``. With
    ``momentum`` :math:`\beta > 0` it is heavy-ball momentum in PyTorch's convention:
    :math:`v_{t+1} = \beta v_t + \nabla J(\theta_t)`, :math:`\theta_{t+1} = \theta_t - \alpha v_{t+1}`.
    A diverging run is returned as it is (its numbers grow); nothing is clipped.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps={num_steps} is negative; use 0 or more steps")
    theta = _as_float_array("theta0", theta0).reshape(-1).copy()
    velocity = np.zeros_like(theta)
    trajectory = np.empty((num_steps + 1, theta.size))
    trajectory[0] = theta
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging rate is allowed to blow up
        for step in range(1, num_steps + 1):
            grad = np.asarray(grad_fn(theta), dtype=np.float64).reshape(theta.shape)
            velocity = momentum * velocity + grad if momentum else grad
            theta = theta - lr * velocity
            trajectory[step] = theta
    return trajectory


def quadratic(theta) -> float:
    """The course's bowl :math:`J(w) = (w_1 - 1)^2 + (w_2 - 2)^2`, minimum 0 at (1, 2).

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    return float(np.sum((theta - QUADRATIC_MINIMUM) ** 2))


def quadratic_grad(theta) -> np.ndarray:
    r"""Gradient of the bowl: :math:`\nabla J(w) = [2(w_1 - 1),\ 2(w_2 - 2)]`.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (2,):
        raise ValueError(f"theta must have shape (2,), got {theta.shape}")
    return 2.0 * (theta - QUADRATIC_MINIMUM)


def quadratic_closed_form(t, lr: float, theta0=(0.0, 0.0)) -> np.ndarray:
    r"""Gradient descent on the bowl without iterating: :math:`\theta_t = c + (1 - 2\alpha)^t (\theta_0 - c)`.

    ``c = (1, 2)``. For :math:`\theta_0 = 0` and :math:`\alpha = 0.1` this is
    :math:`\theta_t = [1, 2]\,(1 - 0.8^t)`. ``t`` may be an int or an array of ints; the
    result has shape ``t.shape + (2,)``.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    t = np.asarray(t)
    factor = (1.0 - 2.0 * lr) ** t.astype(np.float64)
    return QUADRATIC_MINIMUM + factor[..., None] * (np.asarray(theta0, dtype=np.float64) - QUADRATIC_MINIMUM)


def numerical_gradient(f: Callable[[np.ndarray], float], x, eps: float = 1e-6) -> np.ndarray:
    r"""Central differences :math:`\partial f/\partial x_i \approx (f(x + \epsilon e_i) - f(x - \epsilon e_i)) / 2\epsilon`.

    Works for ``x`` of any shape; the result has the same shape. Error is
    :math:`O(\epsilon^2)`, so it is the independent check of a hand-derived gradient.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    x = _as_float_array("x", x).copy()
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + eps
        f_plus = float(f(x))
        x[index] = original - eps
        f_minus = float(f(x))
        x[index] = original
        grad[index] = (f_plus - f_minus) / (2.0 * eps)
    return grad


# --- splitting data: k-fold cross-validation and mini-batches --------------------------------


def kfold_indices(n: int, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffle ``range(n)`` once and cut it into ``k`` folds; return ``(train_idx, val_idx)`` per fold.

    Every index is in exactly one validation fold; fold sizes differ by at most one.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    if not 2 <= k <= n:
        raise ValueError(f"k={k} folds of n={n} examples: need 2 <= k <= n")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    return [(np.sort(np.concatenate(folds[:i] + folds[i + 1 :])), np.sort(fold)) for i, fold in enumerate(folds)]


def minibatch_indices(n: int, batch_size: int, num_steps: int, seed: int = 0) -> list[np.ndarray]:
    """The example indices of each of ``num_steps`` mini-batches: shuffle, cut, reshuffle each epoch.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} with n={n} examples: need 1 <= batch_size <= n")
    rng = np.random.default_rng(seed)
    batches: list[np.ndarray] = []
    while len(batches) < num_steps:
        order = rng.permutation(n)
        batches += [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return batches[:num_steps]


def sgd_linear_regression(
    X,
    y,
    lr: float,
    num_steps: int,
    batch_size: int | None = None,
    momentum: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Fit ``y ≈ X w + b`` from ``w = 0, b = 0`` by (mini-batch) gradient descent with optional momentum.

    ``batch_size=None`` uses all examples each step (plain gradient descent); otherwise each
    step uses the batch from :func:`minibatch_indices` (same ``seed``). Momentum follows
    PyTorch's ``SGD``: ``v = momentum * v + g``, ``theta -= lr * v``. Returns ``(w, b, losses)``
    where ``losses`` holds the MSE on *all* examples before each step and after the last one
    (length ``num_steps + 1``).

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    X, y = _as_float_array("X", X), _as_float_array("y", y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must have shape (N, D) and y shape (N,); got X {X.shape} and y {y.shape}")
    n, dim = X.shape
    batches = minibatch_indices(n, batch_size, num_steps, seed) if batch_size else [slice(None)] * num_steps
    w, b = np.zeros(dim), 0.0
    v_w, v_b = np.zeros(dim), 0.0
    losses = np.empty(num_steps + 1)
    for step, batch in enumerate(batches):  # the same formulas as linear_mse_grad, without its input checks
        losses[step] = np.mean((X @ w + b - y) ** 2)
        X_batch, residuals = X[batch], X[batch] @ w + b - y[batch]
        g_w, g_b = 2.0 / len(residuals) * (X_batch.T @ residuals), 2.0 / len(residuals) * residuals.sum()
        v_w, v_b = momentum * v_w + g_w, momentum * v_b + g_b
        w, b = w - lr * v_w, b - lr * v_b
    losses[num_steps] = np.mean((X @ w + b - y) ** 2)
    return w, float(b), losses


# --- from MSE to cross-entropy -----------------------------------------------------------------


def softmax(logits, axis: int = -1) -> np.ndarray:
    r"""Probabilities :math:`p_j = e^{z_j} / \sum_k e^{z_k}`, computed stably.

    Subtracting :math:`\max_k z_k` first changes nothing mathematically but keeps
    ``exp`` from overflowing for large logits.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    z = _as_float_array("logits", logits)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(logits, axis: int = -1) -> np.ndarray:
    r""":math:`\log p_j = z_j - \log\sum_k e^{z_k}`, computed stably (no ``log(0)`` for tiny probabilities).

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    z = _as_float_array("logits", logits)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _check_logits_targets(logits, targets) -> tuple[np.ndarray, np.ndarray]:
    z = _as_float_array("logits", logits)
    t = np.asarray(targets)
    if z.ndim == 1:  # one position: a vector of logits and one target
        z, t = z[None, :], t.reshape(1)
    if z.ndim != 2 or t.shape != (z.shape[0],):
        raise ValueError(f"logits must have shape (N, V) and targets shape (N,); got {z.shape} and {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must be integer token ids, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= z.shape[1]):
        raise ValueError(f"targets must lie in [0, {z.shape[1] - 1}] (the vocabulary), got {t.min()}..{t.max()}")
    return z, t


def cross_entropy(logits, targets) -> float:
    r"""Mean negative log-likelihood :math:`-\frac{1}{N}\sum_i \log \mathrm{softmax}(z_i)_{t_i}`.

    ``logits`` has shape (N, V) (or (V,) for one position), ``targets`` holds N integer
    ids in ``[0, V)``. Same value as ``torch.nn.functional.cross_entropy``.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    z, t = _check_logits_targets(logits, targets)
    return float(-np.mean(log_softmax(z)[np.arange(t.size), t]))


def one_hot(targets, num_classes: int) -> np.ndarray:
    """Rows of zeros with a 1 at each target id; shape ``(N, num_classes)``.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    t = np.asarray(targets).reshape(-1)
    out = np.zeros((t.size, num_classes))
    out[np.arange(t.size), t] = 1.0
    return out


def cross_entropy_grad(logits, targets) -> np.ndarray:
    r"""Gradient of :func:`cross_entropy` with respect to the logits: :math:`(\mathrm{softmax}(z) - \mathrm{onehot}(t)) / N`.

    Same shape as ``logits``.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    z, t = _check_logits_targets(logits, targets)
    grad = (softmax(z) - one_hot(t, z.shape[1])) / t.size
    return grad.reshape(np.shape(logits))


# --- checking one result against another -------------------------------------------------------


def compare(name: str, ours, reference, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """Print whether ``ours`` equals ``reference`` exactly, approximately, and the largest difference.

    ``reference`` may be a NumPy array, a number or a torch tensor (it is detached and
    moved to the CPU). Approximately means ``numpy.allclose(ours, reference, rtol, atol)``.
    Returns that approximate verdict, so ``assert compare(...)`` stops a notebook on a mismatch.
    Modelled on the ``cmp()`` of Karpathy's ``makemore_part4_backprop.ipynb``.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    a, b = _to_numpy(ours), _to_numpy(reference)
    if a.shape != b.shape:
        print(f"{name:<30} | shapes differ: ours {a.shape}, reference {b.shape}")
        return False
    exact = bool(np.array_equal(a, b))
    approximate = bool(np.allclose(a, b, rtol=rtol, atol=atol))
    max_diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    print(f"{name:<30} | exact: {exact!s:<5} | approximate: {approximate!s:<5} | max abs diff: {max_diff:.1e}")
    return approximate


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
