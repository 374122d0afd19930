"""helpers.by_hand against references nobody here wrote: torch.autograd, F.mse_loss, F.cross_entropy,
torch.optim.SGD and numpy.linalg.lstsq, on seeded random inputs of several shapes; plus the course's facts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import by_hand

SHAPES = [(1,), (7,), (3, 4), (2, 3, 5)]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- MSE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_mse_matches_torch_mse_loss(shape):
    y, y_hat = rng(1).normal(size=shape), rng(2).normal(size=shape)
    reference = F.mse_loss(torch.tensor(y_hat), torch.tensor(y)).item()
    assert by_hand.mse(y, y_hat) == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_mse_gradient_matches_autograd(shape):
    y, y_hat = rng(3).normal(size=shape), rng(4).normal(size=shape)
    y_hat_t = torch.tensor(y_hat, requires_grad=True)
    F.mse_loss(y_hat_t, torch.tensor(y)).backward()
    np.testing.assert_allclose(by_hand.mse_grad_wrt_predictions(y, y_hat), y_hat_t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_course_mse_is_1_2():
    y = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    y_hat = [2, 1, 5, 0, 6, 8, 3, 4, 6, 2]
    assert np.sum((np.array(y) - np.array(y_hat)) ** 2) == 12
    assert by_hand.mse(y, y_hat) == pytest.approx(1.2, abs=1e-15)


def test_mse_rejects_mismatched_shapes_and_empty_input():
    with pytest.raises(ValueError, match="shape"):
        by_hand.mse([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        by_hand.mse([], [])


# --- linear regression ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(1, 1), (10, 3), (50, 7)])
def test_linear_prediction_and_gradient_match_autograd(n, d):
    g = rng(n * 10 + d)
    X, y, w, b = g.normal(size=(n, d)), g.normal(size=n), g.normal(size=d), float(g.normal())
    w_t = torch.tensor(w, requires_grad=True)
    b_t = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    prediction = torch.tensor(X) @ w_t + b_t
    F.mse_loss(prediction, torch.tensor(y)).backward()
    np.testing.assert_allclose(by_hand.linear_predict(X, w, b), prediction.detach().numpy(), rtol=1e-12)
    grad_w, grad_b = by_hand.linear_mse_grad(X, y, w, b)
    np.testing.assert_allclose(grad_w, w_t.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert grad_b == pytest.approx(b_t.grad.item(), rel=1e-10, abs=1e-13)


def test_linear_predict_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        by_hand.linear_predict(np.ones((4, 3)), np.ones(2), 0.0)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_full_batch_gradient_descent_reaches_lstsq(d):
    g = rng(d)
    X = g.normal(size=(100, d))
    y = X @ g.normal(size=d) + 0.3 + 0.1 * g.normal(size=100)
    w, b, losses = by_hand.sgd_linear_regression(X, y, lr=0.1, num_steps=1000)
    solution = np.linalg.lstsq(np.column_stack([X, np.ones(100)]), y, rcond=None)[0]
    np.testing.assert_allclose(np.r_[w, b], solution, atol=1e-8)
    assert losses.shape == (1001,)
    assert losses[0] == pytest.approx(np.mean(y**2))  # w = 0, b = 0 predicts 0
    assert np.all(np.diff(losses) <= 1e-15)  # a small enough step never increases the loss


@pytest.mark.parametrize(("batch_size", "momentum"), [(None, 0.0), (None, 0.9), (8, 0.0), (5, 0.5)])
def test_sgd_linear_regression_matches_torch_sgd(batch_size, momentum):
    g = rng(7)
    X, y = g.normal(size=(40, 3)), g.normal(size=40)
    lr, num_steps, seed = 0.05, 30, 11
    w, b, losses = by_hand.sgd_linear_regression(X, y, lr, num_steps, batch_size=batch_size, momentum=momentum, seed=seed)

    w_t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w_t, b_t], lr=lr, momentum=momentum)
    X_t, y_t = torch.tensor(X), torch.tensor(y)
    batches = by_hand.minibatch_indices(40, batch_size, num_steps, seed) if batch_size else [np.arange(40)] * num_steps
    torch_losses = []
    for batch in batches:
        with torch.no_grad():
            torch_losses.append(F.mse_loss(X_t @ w_t + b_t, y_t).item())
        index = torch.as_tensor(batch)
        optimizer.zero_grad()
        F.mse_loss(X_t[index] @ w_t + b_t, y_t[index]).backward()
        optimizer.step()
    np.testing.assert_allclose(w, w_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert b == pytest.approx(b_t.item(), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(losses[:-1], torch_losses, rtol=1e-10)


# --- gradient descent ------------------------------------------------------------------------------


def test_course_gradient_descent_facts():
    theta0 = np.zeros(2)
    np.testing.assert_array_equal(by_hand.quadratic_grad(theta0), [-2.0, -4.0])
    trajectory = by_hand.gradient_descent(by_hand.quadratic_grad, theta0, lr=0.1, num_steps=20)
    assert trajectory.shape == (21, 2)
    np.testing.assert_allclose(trajectory[1], [0.2, 0.4], atol=1e-15)
    np.testing.assert_allclose(trajectory[2], [0.36, 0.72], atol=1e-15)
    t = np.arange(21)
    expected = np.array([1.0, 2.0]) * (1 - 0.8**t)[:, None]  # the notebook's closed form
    np.testing.assert_allclose(trajectory, expected, atol=1e-12)
    np.testing.assert_allclose(by_hand.quadratic_closed_form(t, 0.1), expected, atol=1e-12)


def _torch_gd(loss_fn, theta0, lr, num_steps, momentum=0.0):
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=lr, momentum=momentum)
    rows = [theta.detach().clone()]
    for _ in range(num_steps):
        optimizer.zero_grad()
        loss_fn(theta).backward()
        optimizer.step()
        rows.append(theta.detach().clone())
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("lr", [0.01, 0.1, 0.5, 0.9])
def test_gradient_descent_on_the_bowl_matches_torch_sgd(lr):
    c = torch.tensor([1.0, 2.0], dtype=torch.float64)
    reference = _torch_gd(lambda w: ((w - c) ** 2).sum(), [0.0, 0.0], lr, 25)
    ours = by_hand.gradient_descent(by_hand.quadratic_grad, [0.0, 0.0], lr=lr, num_steps=25)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours, by_hand.quadratic_closed_form(np.arange(26), lr), atol=1e-12)


@pytest.mark.parametrize(("dim", "momentum"), [(1, 0.0), (3, 0.0), (5, 0.9), (8, 0.5)])
def test_gradient_descent_on_a_random_quadratic_matches_torch_sgd(dim, momentum):
    g = rng(dim)
    M = g.normal(size=(dim, dim))
    A, v, theta0 = M @ M.T / dim + np.eye(dim), g.normal(size=dim), g.normal(size=dim)
    A_t, v_t = torch.tensor(A), torch.tensor(v)
    reference = _torch_gd(lambda th: 0.5 * th @ A_t @ th - v_t @ th, theta0, 0.05, 40, momentum)
    ours = by_hand.gradient_descent(lambda th: A @ th - v, theta0, lr=0.05, num_steps=40, momentum=momentum)
    np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lr", [1.01, 1.1, 1.5])
def test_gradient_descent_diverges_above_lr_1(lr):
    trajectory = by_hand.gradient_descent(by_hand.quadratic_grad, [0.0, 0.0], lr=lr, num_steps=200)
    distances = np.linalg.norm(trajectory - by_hand.QUADRATIC_MINIMUM, axis=1)
    np.testing.assert_allclose(distances[1:] / distances[:-1], abs(1 - 2 * lr), rtol=1e-9)  # grows by |1 - 2α| > 1
    assert distances[-1] > 10 * distances[0]


@pytest.mark.parametrize("lr", [0.05, 0.5, 0.95])
def test_gradient_descent_converges_below_lr_1(lr):
    trajectory = by_hand.gradient_descent(by_hand.quadratic_grad, [0.0, 0.0], lr=lr, num_steps=400)
    np.testing.assert_allclose(trajectory[-1], by_hand.QUADRATIC_MINIMUM, atol=1e-6)


def test_gradient_descent_at_lr_1_bounces_forever():
    trajectory = by_hand.gradient_descent(by_hand.quadratic_grad, [0.0, 0.0], lr=1.0, num_steps=6)
    np.testing.assert_allclose(trajectory[::2], np.zeros((4, 2)), atol=1e-12)
    np.testing.assert_allclose(trajectory[1::2], np.tile([2.0, 4.0], (3, 1)), atol=1e-12)


def test_gradient_descent_rejects_negative_steps():
    with pytest.raises(ValueError, match="num_steps"):
        by_hand.gradient_descent(by_hand.quadratic_grad, [0.0, 0.0], lr=0.1, num_steps=-1)


# --- numerical gradient ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_numerical_gradient_matches_autograd(shape):
    x = rng(5).normal(size=shape)
    x_t = torch.tensor(x, requires_grad=True)
    (torch.sin(x_t) * x_t**2).sum().backward()
    ours = by_hand.numerical_gradient(lambda a: float(np.sum(np.sin(a) * a**2)), x)
    np.testing.assert_allclose(ours, x_t.grad.numpy(), rtol=1e-6, atol=1e-8)


def test_numerical_gradient_does_not_modify_its_input():
    x = np.array([1.0, 2.0])
    by_hand.numerical_gradient(by_hand.quadratic, x)
    np.testing.assert_array_equal(x, [1.0, 2.0])


# --- softmax and cross-entropy ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (4, 5), (3, 2, 7)])
def test_softmax_and_log_softmax_match_torch(shape):
    z = 3 * rng(6).normal(size=shape)
    np.testing.assert_allclose(by_hand.softmax(z), torch.softmax(torch.tensor(z), dim=-1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(by_hand.log_softmax(z), torch.log_softmax(torch.tensor(z), dim=-1).numpy(), rtol=1e-12)


def test_softmax_is_stable_for_huge_logits():
    z = np.array([1000.0, 999.0, -1000.0])
    p = by_hand.softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, torch.softmax(torch.tensor(z), dim=0).numpy(), rtol=1e-12)
    assert by_hand.cross_entropy(z, 2) == pytest.approx(F.cross_entropy(torch.tensor(z)[None], torch.tensor([2])).item())


@pytest.mark.parametrize(("n", "v"), [(1, 2), (5, 5), (16, 50)])
def test_cross_entropy_and_its_gradient_match_torch(n, v):
    g = rng(n + v)
    z, t = 2 * g.normal(size=(n, v)), g.integers(0, v, size=n)
    z_t = torch.tensor(z, requires_grad=True)
    loss = F.cross_entropy(z_t, torch.tensor(t))
    loss.backward()
    assert by_hand.cross_entropy(z, t) == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(by_hand.cross_entropy_grad(z, t), z_t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_gradient_matches_numerical_gradient():
    g = rng(9)
    z, t = g.normal(size=(6, 5)), g.integers(0, 5, size=6)
    numerical = by_hand.numerical_gradient(lambda a: by_hand.cross_entropy(a, t), z)
    np.testing.assert_allclose(by_hand.cross_entropy_grad(z, t), numerical, rtol=1e-6, atol=1e-9)


def test_cross_entropy_of_one_position_accepts_a_vector():
    z = np.array([0.5, -1.0, 2.0, 0.3, 1.0])
    reference = F.cross_entropy(torch.tensor(z)[None], torch.tensor([2]))
    assert by_hand.cross_entropy(z, 2) == pytest.approx(reference.item(), rel=1e-12)
    assert by_hand.cross_entropy_grad(z, 2).shape == (5,)


def test_cross_entropy_rejects_bad_targets():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="integer"):
        by_hand.cross_entropy(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        by_hand.cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        by_hand.cross_entropy(z, np.array([0, 1, 2]))


def test_one_hot_matches_torch():
    t = np.array([0, 3, 1, 3])
    np.testing.assert_array_equal(by_hand.one_hot(t, 4), F.one_hot(torch.tensor(t), 4).numpy())


# --- splits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(10, 2), (200, 5), (23, 4), (5, 5)])
def test_kfold_indices_partition_the_data(n, k):
    folds = by_hand.kfold_indices(n, k, seed=3)
    assert len(folds) == k
    all_val = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(all_val), np.arange(n))  # each index validated exactly once
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:
        assert len(np.intersect1d(train, val)) == 0
        np.testing.assert_array_equal(np.union1d(train, val), np.arange(n))
    again = by_hand.kfold_indices(n, k, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))


def test_kfold_indices_rejects_bad_k():
    with pytest.raises(ValueError, match="k="):
        by_hand.kfold_indices(3, 4)
    with pytest.raises(ValueError, match="k="):
        by_hand.kfold_indices(10, 1)


def test_minibatch_indices_cover_each_epoch_once():
    batches = by_hand.minibatch_indices(20, 5, num_steps=12, seed=0)
    assert len(batches) == 12 and all(len(b) == 5 for b in batches)
    for epoch in range(3):
        np.testing.assert_array_equal(np.sort(np.concatenate(batches[4 * epoch : 4 * epoch + 4])), np.arange(20))


# --- compare -------------------------------------------------------------------------------------------


def test_compare_reports_exact_approximate_and_difference(capsys):
    a = np.array([1.0, 2.0, 3.0])
    assert by_hand.compare("same", a, torch.tensor(a)) is True
    assert "exact: True" in capsys.readouterr().out
    assert by_hand.compare("close", a, a + 1e-12) is True
    out = capsys.readouterr().out
    assert "exact: False" in out and "approximate: True" in out and "1.0e-12" in out
    assert by_hand.compare("far", a, a + np.array([0.0, 0.5, 0.0])) is False
    assert "max abs diff: 5.0e-01" in capsys.readouterr().out
    assert by_hand.compare("shape", a, a[:2]) is False
    assert "shapes differ" in capsys.readouterr().out
