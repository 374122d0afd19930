"""The workshop build (``make student``): solutions out, checks in, and the notebooks still run.

Builds the student copies of whatever notebooks exist into a temporary folder and checks
every one's structure: no solution left, every check kept, every stub's check prints "⏳ not
done yet", and no later cell needs a name only a solution defined. One student notebook,
the one with the most stubs, is also executed top to bottom in ``smoke`` mode (nbval already
runs every instructor notebook; running them all again here would double the suite).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import importlib
import io
import pkgutil
import re
from pathlib import Path
from unittest import mock

import nbformat
import pytest

import helpers
from helpers.exercises import NOT_DONE
from helpers.settings import REPO_ROOT
from tools.course import notebook_paths
from tools.student import (
    EXERCISE_TAG,
    SOLUTION_TAG,
    StubError,
    build_student,
    exercise_hint,
    stub_source,
    student_notebook,
)
from tools.student import main as student_main

EXECUTED = "01_mse_and_gradient_descent.ipynb"  # five stubs and no model or data: seconds in smoke mode
NOTEBOOKS = notebook_paths()


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def _code(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "student"
    written = build_student(out_dir=out)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    return out


# --- the stub, on cells written here ---------------------------------------------------------


def test_stub_keeps_imports_and_the_check_call_unchanged():
    solution = (
        "# solution: exercise 1\n"
        "from helpers.exercises import check_tokens_per_step\n"
        "gpu = make_settings('gpu')\n"
        "answer = gpu.batch_size * gpu.block_size\n"
        "check_tokens_per_step(\n    answer\n)"
    )
    assert stub_source(solution, "how many tokens?") == (
        "from helpers.exercises import check_tokens_per_step\n"
        "answer = None  # TODO: how many tokens?\n"
        "check_tokens_per_step(\n    answer\n)"
    )


def test_stub_sets_whatever_name_the_check_reads():
    assert stub_source("def my_luhn(n):\n    return True\n\n\ncheck_luhn(my_luhn)", "hint").splitlines() == [
        "my_luhn = None  # TODO: hint",
        "check_luhn(my_luhn)",
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("answer = 3", "must end with a check_"),
        ("answer = 3\nprint(answer)", "must end with a check_"),
        ("check_mse(3)", "first argument must be a variable"),
        ("%timeit 1\ncheck_mse(answer)", "not plain Python"),
        ("", "empty"),
    ],
)
def test_a_solution_without_a_final_check_is_refused_with_the_reason(source, message):
    with pytest.raises(StubError, match=message) as error:
        stub_source(source, where="10_x.ipynb, cell 3")
    assert "10_x.ipynb, cell 3" in str(error.value)


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, source, *tags in cells:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


def test_hints_come_from_the_exercise_text():
    nb = _nb(
        ("md", "## Exercises\n\n**Exercise 1.** Add two and two.\nThen more.\n\n**Exercise 2.** Halve it. Twice."),
        ("code", "answer = 2\ncheck_half(answer)", SOLUTION_TAG),
        ("md", "## Exercises\n\n1. First thing to do.\n2. Second thing:\n   over two lines.\n3. Third."),
        ("code", "# solution: exercise 3\nanswer = 3\ncheck_c(answer)", SOLUTION_TAG),
        ("code", "answer = 1\ncheck_a(answer)", SOLUTION_TAG),
        ("code", "answer = 2\ncheck_b(answer)", SOLUTION_TAG),
        ("md", "Nothing to read here."),
        ("code", "answer = 2\ncheck_b(answer)", SOLUTION_TAG),
        ("code", "# solution: the ratio, e.g. new over old\nanswer = 2\ncheck_b(answer)", SOLUTION_TAG),
    )
    assert exercise_hint(nb.cells, 1) == "Halve it."
    assert exercise_hint(nb.cells, 3) == "Third."
    assert exercise_hint(nb.cells, 4) == "Second thing: over two lines."  # the 2nd solution after the list
    assert exercise_hint(nb.cells, 7) == "write your solution here, then run the cell"
    assert exercise_hint(nb.cells, 8) == "the ratio, e.g. new over old"  # the author's own hint


def test_a_notebooks_own_stub_makes_the_solution_cell_go():
    nb = _nb(
        ("md", "**Exercise 1.** Write my_luhn."),
        ("code", "my_luhn = None  # yours\ncheck_luhn(my_luhn)"),
        ("code", "def my_luhn(n):\n    return True\n\n\ncheck_luhn(my_luhn)", SOLUTION_TAG),
        ("code", "answer = 4\ncheck_sum(answer)", SOLUTION_TAG),
    )
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="⏳ not done yet")]
    student = student_notebook(nb, "x.ipynb")
    assert [c.source for c in student.cells[1:]] == [
        "my_luhn = None  # yours\ncheck_luhn(my_luhn)",
        "answer = None  # TODO: Write my_luhn.\ncheck_sum(answer)",
    ]
    assert student.cells[1].outputs == [] and _tags(student.cells[2]) == [EXERCISE_TAG]
    assert SOLUTION_TAG in _tags(nb.cells[2]), "the instructor notebook must not change"


# --- the build of the real notebooks ------------------------------------------------------


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.name)
def test_student_copy_has_no_solutions_and_keeps_every_check(source, student_dir):
    original = nbformat.read(source, as_version=4)
    student = nbformat.read(student_dir / source.name, as_version=4)
    solutions = [c for c in _code(original) if SOLUTION_TAG in _tags(c)]
    assert not [c for c in student.cells if SOLUTION_TAG in _tags(c)]
    assert all(c.outputs == [] and c.execution_count is None for c in _code(student)), "student notebooks carry no outputs"

    student_code = "\n".join(c.source for c in _code(student))
    student_lines = {line.strip() for line in student_code.splitlines()}
    elsewhere = {line.strip() for c in _code(original) if SOLUTION_TAG not in _tags(c) for line in c.source.splitlines()}
    for cell in solutions:
        calls = list(re.finditer(r"^(\w+\.)?check_\w+\(", cell.source, re.M))
        assert calls, f"{source.name}: a solution cell without a check_…(answer) call: {cell.source!r}"
        check = cell.source[calls[-1].start() :].strip()
        assert check in student_code, f"{source.name}: the check {check!r} is missing from the student copy"
        for line in cell.source.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "import ", "from ", "check_")) and line not in elsewhere:
                assert line not in student_lines, f"{source.name}: solution line {line!r} leaked into the student copy"
    # every stub is what the issue asks for: `answer = None  # TODO: ...` then the check call
    for cell in student.cells:
        if EXERCISE_TAG in _tags(cell):
            assert re.search(r"^\w+ = None  # TODO: .+\ncheck_\w+\(\w+", cell.source, re.M), cell.source
    texts = [[c.source for c in nb.cells if c.cell_type == "markdown"] for nb in (original, student)]
    assert len(texts[0]) == len(texts[1]), "every Markdown cell stays"
    assert all(a == b for a, b in zip(*texts) if "](../" not in a), "the text changes only in relative links"


@functools.cache
def _check_namespace() -> dict:
    """Every name the course's exercise modules define (the notebooks import them in an earlier cell)."""
    namespace: dict = {}
    for module in pkgutil.iter_modules(helpers.__path__):
        if "exercise" in module.name:
            namespace.update(vars(importlib.import_module(f"helpers.{module.name}")))
    return namespace


class _EarlierCells(dict):
    """A stub's local names: the exercise modules' names, builtins, and a stand-in for anything
    earlier cells would have defined (a check may also read, say, ``results[...]``)."""

    def __missing__(self, key: str):
        if key in _check_namespace():
            return _check_namespace()[key]
        if hasattr(builtins, key):
            return getattr(builtins, key)
        return mock.MagicMock(name=key)


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.name)
def test_every_stub_says_not_done_yet(source, student_dir):
    student = nbformat.read(student_dir / source.name, as_version=4)
    stubs = [c for c in student.cells if EXERCISE_TAG in _tags(c)]
    for cell in stubs:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(cell.source, {}, _EarlierCells())  # the course's own stub, built just now
        assert NOT_DONE in printed.getvalue(), f"{source.name}: {cell.source!r} printed {printed.getvalue()!r}"


def test_relative_links_still_resolve_from_the_build(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = _nb(
        ("md", "See [perplexity](../GLOSSARY.md#perplexity), [02](02_b.ipynb), [web](https://x.org/a)."),
        ("code", "answer = 1\ncheck_a(answer)", SOLUTION_TAG),
    )
    nbformat.write(nb, notebooks / "01_a.ipynb")
    nbformat.write(_nb(("md", "b")), notebooks / "02_b.ipynb")
    build_student(notebooks_dir=notebooks, out_dir=tmp_path / "build" / "student")
    built = nbformat.read(tmp_path / "build" / "student" / "01_a.ipynb", as_version=4)
    assert built.cells[0].source == (
        "See [perplexity](../../GLOSSARY.md#perplexity), [02](02_b.ipynb), [web](https://x.org/a)."
    )


# --- the student notebooks run ------------------------------------------------------------


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names a cell defines, names it reads), from its Python (IPython magics turned into calls first)."""
    from IPython.core.inputtransformer2 import TransformerManager

    defined, read = set(), set()
    for node in ast.walk(ast.parse(TransformerManager().transform_cell(source))):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store) else read).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return defined, read


def _needs_a_solution(original, student) -> list[str]:
    """Cells of ``original`` that read a name which only a solution cell, stubbed out in ``student``, defined."""
    defined_by_student = set().union(*(_names(c.source)[0] for c in _code(student)))
    solution_only: dict[str, int] = {}
    problems = []
    for index, cell in enumerate(original.cells):
        if cell.cell_type != "code":
            continue
        defined, read = _names(cell.source)
        if SOLUTION_TAG in _tags(cell):
            solution_only.update({name: index for name in defined - defined_by_student})
        elif read & solution_only.keys():
            problems.append(f"cell {index} reads {sorted(read & solution_only.keys())}, defined only by a solution")
    return problems


def test_a_name_only_a_solution_defined_is_caught():
    original = _nb(
        ("code", "import numpy as np"),
        ("code", "def f(x):\n    return 2 * x\n\n\nanswer = f(3)\ncheck_a(answer)", SOLUTION_TAG),
        ("code", "print(answer, np.pi)"),  # the stub defines `answer` too: fine
        ("code", "print(f(4))"),  # only the solution defined f
    )
    assert _needs_a_solution(original, student_notebook(original)) == ["cell 3 reads ['f'], defined only by a solution"]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.name)
def test_no_later_cell_needs_what_only_a_solution_defined(source, student_dir):
    """The student notebook runs top to bottom only if no cell needs a name that only a stubbed-out solution defined."""
    problems = _needs_a_solution(nbformat.read(source, as_version=4), nbformat.read(student_dir / source.name, as_version=4))
    assert not problems, f"{source.name}: {problems}"


def test_a_student_notebook_runs_top_to_bottom(student_dir, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(student_dir / EXECUTED, as_version=4)
    assert [c for c in nb.cells if EXERCISE_TAG in _tags(c)], f"{EXECUTED} has no stub to run; execute one that has"
    monkeypatch.setenv("COURSE_MODE", "smoke")
    monkeypatch.setenv("COURSE_ARTIFACTS", str(tmp_path / "artifacts"))  # never touch the real artifacts/
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(student_dir)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error

    for cell in _code(nb):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{EXECUTED}: {cell.source[:80]!r} raised {errors[0].ename}"
        if EXERCISE_TAG in _tags(cell) or re.search(r"^\w+ = None\b", cell.source, re.M):
            printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            if "check_" in cell.source:
                assert NOT_DONE in printed, f"{EXECUTED}: {cell.source!r} printed {printed!r}"


# --- the learner's path: make lab opens the student build, make teach the teacher's copy ---------


def _make_recipe(target: str) -> list[str]:
    lines = (REPO_ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_lab_opens_the_student_build_and_make_teach_the_solutions():
    lab, teach = _make_recipe("lab"), _make_recipe("teach")
    assert lab[0] == "$(PY) -m tools.student --if-missing" and lab[-1].endswith("jupyter lab build/student/")
    assert teach[-1].endswith("jupyter lab notebooks/")
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    to_learn = readme[readme.index("To learn") :].split("\n## ", 1)[0]
    assert "make lab" in to_learn and "build/student/" in to_learn and "make teach" in to_learn


def test_the_learners_build_is_made_once_and_never_overwrites_answers(tmp_path, capsys):
    out = tmp_path / "student"
    assert student_main(["--out", str(out), "--if-missing"]) == 0
    first = sorted(out.glob("*.ipynb"))
    assert [p.name for p in first] == [p.name for p in NOTEBOOKS]
    first[0].write_text("my answers", encoding="utf-8")  # a learner's work
    assert student_main(["--out", str(out), "--if-missing"]) == 0
    assert first[0].read_text(encoding="utf-8") == "my answers"
    assert "keeping the student notebooks" in capsys.readouterr().out
    assert student_main(["--out", str(out)]) == 0  # make student: a fresh build
    assert first[0].read_text(encoding="utf-8") != "my answers"
