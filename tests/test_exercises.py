"""helpers.exercises: right answers pass, wrong ones get a hint, unfinished ones say so; nothing raises.

References here come from torch, not from the module under test. The last tests run notebook 01's
solution cells, and the workshop stubs a build makes of them (``answer = None  # TODO``).
"""

from __future__ import annotations

import ast
import math

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import exercises
from helpers.settings import REPO_ROOT

NOTEBOOK_01 = REPO_ROOT / "notebooks" / "01_mse_and_gradient_descent.ipynb"

LOGITS = torch.tensor(exercises.CE_EXERCISE_LOGITS, dtype=torch.float64)
TARGET = exercises.CE_EXERCISE_TARGET


def _ce_reference() -> tuple[float, np.ndarray]:
    z = LOGITS.clone().requires_grad_(True)
    loss = F.cross_entropy(z[None], torch.tensor([TARGET]))
    loss.backward()
    return loss.item(), z.grad.numpy()


CE_VALUE, CE_GRAD = _ce_reference()
# (check, a right answer computed independently, a wrong answer of the right shape)
CASES = [
    (
        exercises.check_mse,
        F.mse_loss(torch.tensor(exercises.MSE_EXERCISE_Y_HAT), torch.tensor(exercises.MSE_EXERCISE_Y)).item(),
        10 / 5,  # dividing by N - 1 instead of N
    ),
    (exercises.check_theta3, [1.0 * (1 - 0.8**3), 2.0 * (1 - 0.8**3)], [0.36, 0.72]),
    (exercises.check_largest_stable_lr, 1.0, 0.5),
    (exercises.check_cross_entropy, CE_VALUE, -math.log10(torch.softmax(LOGITS, 0)[TARGET].item())),
    (exercises.check_cross_entropy_grad, CE_GRAD, -CE_GRAD),
]
IDS = [case[0].__name__ for case in CASES]


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
def test_right_answer_passes(check, right, wrong, capsys):
    check(right)
    assert capsys.readouterr().out.startswith(exercises.CORRECT)


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
def test_right_answer_as_tensor_or_list_passes(check, right, wrong, capsys):
    check(torch.tensor(np.asarray(right), requires_grad=True))  # a tensor that still tracks gradients
    check(np.asarray(right).tolist())
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.startswith(exercises.CORRECT) for line in out)


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
def test_wrong_answer_gets_a_hint_and_how_far(check, right, wrong, capsys):
    check(wrong)
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG)
    assert "Hint:" in out and "off by up to" in out


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
@pytest.mark.parametrize("unfinished", [None, Ellipsis])
def test_unfinished_answer_is_not_done_yet(check, right, wrong, unfinished, capsys):
    check(unfinished)
    assert capsys.readouterr().out.startswith(exercises.NOT_DONE)


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
@pytest.mark.parametrize("bad", ["1.2", {"a": 1}, True, object(), [1.0, "x"], float("nan")], ids=repr)
def test_wrong_type_gets_a_hint_without_raising(check, right, wrong, bad, capsys):
    check(bad)
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG) and "Hint:" in out


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
def test_wrong_shape_names_both_shapes(check, right, wrong, capsys):
    expected_shape = np.shape(right)
    check(np.zeros((3, 3)))
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG)
    assert f"expected shape {expected_shape}" in out and "got shape (3, 3)" in out


def test_core_check_uses_its_tolerance_and_says_how_close(capsys):
    assert exercises._check("x", 1.0 + 5e-4, 1.0, "hint", atol=1e-3) == "correct"
    assert "5.0e-04" in capsys.readouterr().out
    assert exercises._check("x", 1.0 + 5e-3, 1.0, "hint", atol=1e-3) == "wrong"
    assert "off by up to 0.005" in capsys.readouterr().out


def test_core_check_survives_an_answer_that_breaks_on_use(capsys):
    class Hostile:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    assert exercises._check("x", Hostile(), 1.0, "a hint") == "wrong"
    assert "a hint" in capsys.readouterr().out


# --- the notebook's exercises -------------------------------------------------------------------


def _solution_cells() -> list[str]:
    nb = nbformat.read(NOTEBOOK_01, as_version=4)
    return [cell.source for cell in nb.cells if "solution" in cell.metadata.get("tags", [])]


def _namespace() -> dict:
    names = {name: getattr(exercises, name) for name in dir(exercises) if name.startswith("check_")}
    return {"np": np, **names}


def test_notebook_solution_cells_end_with_a_check_of_answer():
    cells = _solution_cells()
    assert len(cells) >= 4
    for source in cells:
        last = ast.parse(source).body[-1]
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call), source
        assert last.value.func.id.startswith("check_") and [a.id for a in last.value.args] == ["answer"], source


def test_notebook_solutions_are_correct_and_stubs_are_not_done(capsys):
    for source in _solution_cells():
        exec(source, _namespace())
        assert capsys.readouterr().out.startswith(exercises.CORRECT), source
        stub = "answer = None  # TODO\n" + source.strip().splitlines()[-1]
        exec(stub, _namespace())
        assert capsys.readouterr().out.startswith(exercises.NOT_DONE), stub
