"""Notebook 01's hand-written lesson code against references nobody here wrote: torch.autograd, F.mse_loss,
F.cross_entropy, torch.optim.SGD and numpy.linalg.lstsq, on seeded random inputs of several shapes; the
course's facts (MSE 1.2, the iterates, the source article's mistaken update); the widget that runs the
notebook's gradient descent; and ``helpers.by_hand.compare``, the one helper 01 keeps.

The functions under test are the ones 01 defines in its cells (``tests/notebook_code.py`` loads them), so a
mistake in what a learner reads fails here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import widgets
from helpers.by_hand import compare
from tests.notebook_code import notebook_definitions

NB = notebook_definitions("01_mse_and_gradient_descent.ipynb", constants={"minimum", "lr", "theta0"})
SHAPES = [(1,), (7,), (3, 4), (2, 3, 5)]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_the_notebook_defines_the_lesson_code():
    for name in ["mse", "mse_grad", "J", "grad_J", "mistaken_step", "gradient_descent", "linear_mse_grad", "minibatches",
                 "sgd_linear_regression", "kfold_indices", "softmax", "cross_entropy", "cross_entropy_grad",
                 "numerical_gradient", "init_network", "forward", "backward", "train_network"]:
        assert callable(NB.get(name)), f"01 no longer defines {name}; update this test with the notebook"


# --- MSE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_mse_and_its_gradient_match_torch(shape):
    y, y_hat = rng(1).normal(size=shape), rng(2).normal(size=shape)
    y_hat_t = torch.tensor(y_hat, requires_grad=True)
    loss = F.mse_loss(y_hat_t, torch.tensor(y))
    loss.backward()
    assert NB["mse"](y, y_hat) == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(NB["mse_grad"](y, y_hat), y_hat_t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_course_mse_is_1_2_and_the_articles_0_8_drops_the_largest_error():
    y = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], dtype=float)
    y_hat = np.array([2, 1, 5, 0, 6, 8, 3, 4, 6, 2], dtype=float)
    assert NB["mse"](y, y_hat) == pytest.approx(1.2, abs=1e-15)
    assert (np.sum((y - y_hat) ** 2) - np.max((y - y_hat) ** 2)) / len(y) == pytest.approx(0.8)


# --- gradient descent ------------------------------------------------------------------------------


def test_course_gradient_descent_facts():
    theta0 = np.zeros(2)
    np.testing.assert_array_equal(NB["grad_J"](theta0), [-2.0, -4.0])
    trajectory = NB["gradient_descent"](NB["grad_J"], theta0, lr=0.1, num_steps=20)
    assert trajectory.shape == (21, 2)
    np.testing.assert_allclose(trajectory[1], [0.2, 0.4], atol=1e-15)
    np.testing.assert_allclose(trajectory[2], [0.36, 0.72], atol=1e-15)
    expected = np.array([1.0, 2.0]) * (1 - 0.8 ** np.arange(21))[:, None]  # the closed form
    np.testing.assert_allclose(trajectory, expected, atol=1e-12)


def test_the_articles_update_gives_its_iterates_and_walks_away_from_the_minimum():
    theta = [np.zeros(2)]
    for _ in range(30):
        theta.append(NB["mistaken_step"](theta[-1]))
    np.testing.assert_allclose(theta[1], [-0.1, -0.2], atol=1e-15)
    np.testing.assert_allclose(np.round(theta[2], 1), [-0.2, -0.4], atol=1e-15)
    distances = np.linalg.norm(np.array(theta) - [1.0, 2.0], axis=1)
    np.testing.assert_allclose(distances[1:] / distances[:-1], 1 + NB["lr"], rtol=1e-12)  # × 1.1 per step


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
    ours = NB["gradient_descent"](NB["grad_J"], [0.0, 0.0], lr=lr, num_steps=25)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(NB["J"](ours), ((reference - c.numpy()) ** 2).sum(axis=1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_gradient_descent_on_a_random_quadratic_matches_torch_sgd(dim):
    g = rng(dim)
    M = g.normal(size=(dim, dim))
    A, v, theta0 = M @ M.T / dim + np.eye(dim), g.normal(size=dim), g.normal(size=dim)
    A_t, v_t = torch.tensor(A), torch.tensor(v)
    reference = _torch_gd(lambda th: 0.5 * th @ A_t @ th - v_t @ th, theta0, 0.05, 40)
    ours = NB["gradient_descent"](lambda th: A @ th - v, theta0, lr=0.05, num_steps=40)
    np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("lr", "converges"), [(0.05, True), (0.5, True), (0.95, True), (1.01, False), (1.5, False)])
def test_gradient_descent_converges_below_lr_1_and_diverges_above(lr, converges):
    trajectory = NB["gradient_descent"](NB["grad_J"], [0.0, 0.0], lr=lr, num_steps=400)
    distances = np.linalg.norm(trajectory - [1.0, 2.0], axis=1)
    if lr != 0.5:  # 0.5 lands on the minimum in one step; otherwise the distance shrinks or grows by |1 − 2α|
        np.testing.assert_allclose(distances[1:21] / distances[:20], abs(1 - 2 * lr), rtol=1e-9)
    assert (distances[-1] < 1e-6) if converges else (distances[-1] > 10 * distances[0])


# --- linear regression ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(1, 1), (10, 3), (50, 7)])
def test_linear_gradient_matches_autograd(n, d):
    g = rng(n * 10 + d)
    X, y, w, b = g.normal(size=(n, d)), g.normal(size=n), g.normal(size=d), float(g.normal())
    w_t = torch.tensor(w, requires_grad=True)
    b_t = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    F.mse_loss(torch.tensor(X) @ w_t + b_t, torch.tensor(y)).backward()
    grad_w, grad_b = NB["linear_mse_grad"](X, y, w, b)
    np.testing.assert_allclose(grad_w, w_t.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert grad_b == pytest.approx(b_t.grad.item(), rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_full_batch_gradient_descent_reaches_lstsq(d):
    g = rng(d)
    X = g.normal(size=(100, d))
    y = X @ g.normal(size=d) + 0.3 + 0.1 * g.normal(size=100)
    w, b, losses = NB["sgd_linear_regression"](X, y, lr=0.1, num_steps=1000)
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
    w, b, losses = NB["sgd_linear_regression"](X, y, lr, num_steps, batch_size=batch_size, momentum=momentum, seed=seed)

    w_t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w_t, b_t], lr=lr, momentum=momentum)
    X_t, y_t = torch.tensor(X), torch.tensor(y)
    batches = NB["minibatches"](40, batch_size, seed) if batch_size else itertools.repeat(np.arange(40))
    torch_losses = []
    for batch in itertools.islice(batches, num_steps):
        with torch.no_grad():
            torch_losses.append(F.mse_loss(X_t @ w_t + b_t, y_t).item())
        index = torch.as_tensor(batch)
        optimizer.zero_grad()
        F.mse_loss(X_t[index] @ w_t + b_t, y_t[index]).backward()
        optimizer.step()
    np.testing.assert_allclose(w, w_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert b == pytest.approx(b_t.item(), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(losses[:-1], torch_losses, rtol=1e-10)


def test_minibatches_cover_each_epoch_once():
    batches = list(itertools.islice(NB["minibatches"](20, 5, seed=0), 12))
    assert all(len(b) == 5 for b in batches)
    for epoch in range(3):
        np.testing.assert_array_equal(np.sort(np.concatenate(batches[4 * epoch : 4 * epoch + 4])), np.arange(20))


@pytest.mark.parametrize(("n", "k"), [(10, 2), (200, 5), (23, 4), (5, 5)])
def test_kfold_indices_partition_the_data(n, k):
    folds = NB["kfold_indices"](n, k, seed=3)
    assert len(folds) == k
    np.testing.assert_array_equal(np.sort(np.concatenate([val for _, val in folds])), np.arange(n))
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:
        assert len(np.intersect1d(train, val)) == 0
        np.testing.assert_array_equal(np.union1d(train, val), np.arange(n))


# --- softmax and cross-entropy ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (4, 5), (3, 2, 7)])
def test_softmax_matches_torch(shape):
    z = 3 * rng(6).normal(size=shape)
    np.testing.assert_allclose(NB["softmax"](z), torch.softmax(torch.tensor(z), dim=-1).numpy(), rtol=1e-12)


def test_softmax_and_cross_entropy_are_stable_for_huge_logits():
    z = np.array([1000.0, 999.0, -1000.0])
    np.testing.assert_allclose(NB["softmax"](z), torch.softmax(torch.tensor(z), dim=0).numpy(), rtol=1e-12)
    reference = F.cross_entropy(torch.tensor(z)[None], torch.tensor([2])).item()
    assert NB["cross_entropy"](z, 2) == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize(("n", "v"), [(1, 2), (5, 5), (16, 50)])
def test_cross_entropy_and_its_gradient_match_torch(n, v):
    g = rng(n + v)
    z, t = 2 * g.normal(size=(n, v)), g.integers(0, v, size=n)
    z_t = torch.tensor(z, requires_grad=True)
    loss = F.cross_entropy(z_t, torch.tensor(t))
    loss.backward()
    assert NB["cross_entropy"](z, t) == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(NB["cross_entropy_grad"](z, t), z_t.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_numerical_gradient_matches_autograd_and_leaves_its_input_alone(shape):
    x = rng(5).normal(size=shape)
    before = x.copy()
    x_t = torch.tensor(x, requires_grad=True)
    (torch.sin(x_t) * x_t**2).sum().backward()
    ours = NB["numerical_gradient"](lambda a: float(np.sum(np.sin(a) * a**2)), x)
    np.testing.assert_allclose(ours, x_t.grad.numpy(), rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(x, before)


# --- backpropagation through two layers -------------------------------------------------------------


@pytest.mark.parametrize(("n", "hidden", "seed"), [(1, 1, 0), (7, 3, 1), (50, 16, 2)])
def test_two_layer_backward_matches_autograd(n, hidden, seed):
    params = NB["init_network"](hidden, seed)
    g = rng(seed + 100)
    x, y = g.normal(size=(n, 1)), g.normal(size=(n, 1))
    y_hat, h = NB["forward"](params, x)
    grads = NB["backward"](params, x, h, y_hat, y)
    tensors = {name: torch.tensor(value, requires_grad=True) for name, value in params.items()}
    out = torch.tanh(torch.tensor(x) @ tensors["W1"] + tensors["b1"]) @ tensors["W2"] + tensors["b2"]
    np.testing.assert_allclose(y_hat, out.detach().numpy(), rtol=1e-12)
    F.mse_loss(out, torch.tensor(y)).backward()
    assert set(grads) == set(params)
    for name, tensor in tensors.items():
        np.testing.assert_allclose(grads[name], tensor.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


def test_training_the_two_layer_network_lowers_its_loss():
    x = np.linspace(-2, 2, 40)[:, None]
    params, losses = NB["train_network"](NB["init_network"](8, 0), x, np.sin(2 * x), lr=0.1, num_steps=300)
    assert losses.shape == (300,) and losses[-1] < 0.5 * losses[0]
    assert set(params) == {"W1", "b1", "W2", "b2"}


# --- the widget runs the notebook's gradient descent --------------------------------------------------


def test_learning_rate_explorer_shows_the_default_state_and_redraws_with_the_learners_function(monkeypatch):
    calls, shown = [], []

    def spy(grad_fn, theta0, lr, num_steps):
        calls.append((lr, num_steps))
        return gradient_descent(grad_fn, theta0, lr, num_steps)

    class Handle:
        def update(self, figure):
            shown.append(figure)

    def display(figure, display_id=False):
        shown.append(figure)
        return Handle()

    gradient_descent = NB["gradient_descent"]
    monkeypatch.setitem(NB, "gradient_descent", spy)  # what the notebook's explorer_figure calls
    monkeypatch.setattr("IPython.display.display", display)
    sliders = widgets.learning_rate_explorer(NB["explorer_figure"], lr=0.1, num_steps=10)
    assert calls == [(0.1, 10)] and len(shown) == 1  # the starting state, drawn once as an ordinary output
    assert "J = 0.0576" in shown[0].axes[0].get_title()  # J(θ10) for α = 0.1, from the closed form 5 · 0.64**10
    lr_slider, steps_slider = sliders.children
    lr_slider.value = 0.5
    steps_slider.value = 3
    assert calls[1:] == [(0.5, 10), (0.5, 3)] and len(shown) == 3  # each change redraws in place


# --- compare -------------------------------------------------------------------------------------------


def test_compare_reports_exact_approximate_and_difference(capsys):
    a = np.array([1.0, 2.0, 3.0])
    assert compare("same", a, torch.tensor(a)) is True
    assert "exact: True" in capsys.readouterr().out
    assert compare("close", a, a + 1e-12) is True
    out = capsys.readouterr().out
    assert "exact: False" in out and "approximate: True" in out and "1.0e-12" in out
    assert compare("far", a, a + np.array([0.0, 0.5, 0.0])) is False
    assert "max abs diff: 5.0e-01" in capsys.readouterr().out
    assert compare("shape", a, a[:2]) is False
    assert "shapes differ" in capsys.readouterr().out
