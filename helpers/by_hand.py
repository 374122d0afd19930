"""How close is a result computed by hand to a reference? :func:`compare` prints it.

Introduced in ``01_mse_and_gradient_descent.ipynb``. Notebook 01 writes its lesson code (the MSE
and its gradient, gradient descent, mini-batch SGD, the cross-entropy and its gradient,
backpropagation through two layers) in its own cells; ``tests/test_by_hand.py`` runs those cells'
definitions against PyTorch. What stays here is the one check every hand computation is put
through, in the spirit of the ``cmp()`` of Karpathy's micrograd lectures: equal exactly, equal
approximately, and the largest difference.
"""

from __future__ import annotations

import numpy as np


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
