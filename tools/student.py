"""``make student``: the workshop build of the notebooks, with the solutions taken out.

The notebooks in ``notebooks/`` are the instructor version: every exercise has a worked
solution in a code cell tagged ``solution`` that ends with a ``check_…(answer)`` call.
``python -m tools.student`` writes a copy of every notebook to ``build/student/`` in which
each solution cell becomes a stub::

    answer = None  # TODO: <the exercise's first sentence>
    check_mse(answer)

so the notebook still runs top to bottom and each check prints "⏳ not done yet" until the
learner fills it in. Imports the solution cell made (the check function, say) stay in the stub.
Where the notebook already has its own stub cell right before the solution (the same check
call on a name set to ``None``), the solution cell is simply removed. Student notebooks carry
no outputs at all: learners run them. Relative links (``../GLOSSARY.md``) are rewritten so they
still resolve from ``build/student/``.

No notebook calls this module: it is the build behind ``make student`` (workshops) and ``make lab``
(the learner's path in the README: JupyterLab opens the student build, built once with
``--if-missing`` so a learner's answers are never overwritten; ``make teach`` opens the teacher's
``notebooks/`` with every solution), and ``tests/test_student.py`` checks it.
``python -m tools.student --out DIR`` writes elsewhere.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import re
import sys
from pathlib import Path

import nbformat

from helpers.atomic import build_folder
from helpers.settings import get_settings
from tools.course import notebook_paths

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"  # what a stubbed cell is tagged with in the student build
STUDENT_DIR = Path("build") / "student"  # under the repository root
DEFAULT_HINT = "write your solution here, then run the cell"
MAX_HINT_CHARS = 100

_EXERCISE_BOLD = re.compile(r"\*\*Exercise\s+(\d+)\.?\*\*\.?\s*(.*?)(?=\*\*Exercise\s+\d+|\Z)", re.S)
_NUMBERED_ITEM = re.compile(r"^\s*(\d+)\.\s+(.*?)(?=^\s*\d+\.\s|\Z)", re.S | re.M)
_SOLUTION_NUMBER = re.compile(r"exercise\s+(\d+)", re.I)
_SOLUTION_COMMENT = re.compile(r"^#\s*solution\b:?\s*(.*)$", re.I)
_MARKDOWN_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


class StubError(ValueError):
    """A solution cell that cannot be turned into a stub (the message names the cell and why)."""


def _first_sentence(text: str) -> str:
    """The first sentence of a Markdown paragraph as one short plain line."""
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)  # **bold** -> bold
    text = " ".join(text.split())
    match = re.match(r"(.+?[.?!:])(?=\s+[A-Z(\[`$*]|\s*$)", text)  # "e.g. one" ends no sentence
    sentence = match.group(1) if match else text
    if len(sentence) > MAX_HINT_CHARS:
        sentence = sentence[: MAX_HINT_CHARS - 1].rsplit(" ", 1)[0] + "…"
    return sentence


def _check_call(source: str, where: str) -> tuple[list[str], str, str]:
    """Split a solution cell into (its import lines, the final check call's lines, the answer's name).

    Raises :class:`StubError` when the cell does not end with ``check_…(name)``.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise StubError(f"{where}: the solution cell is not plain Python ({error.msg}, line {error.lineno})") from None
    if not tree.body:
        raise StubError(f"{where}: the solution cell is empty; it should end with a check_…(answer) call")
    last = tree.body[-1]
    func = last.value.func if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if not name.startswith("check_"):
        raise StubError(f"{where}: a solution cell must end with a check_…(answer) call, so the stub can keep it")
    args = last.value.args
    if not args or not isinstance(args[0], ast.Name):
        raise StubError(f"{where}: the check call's first argument must be a variable name, like check_mse(answer)")
    lines = source.splitlines()
    imports = []
    for node in tree.body[:-1]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.extend(lines[node.lineno - 1 : node.end_lineno])
    check_lines = lines[last.lineno - 1 : last.end_lineno]
    return imports, "\n".join(check_lines), args[0].id


def stub_source(solution_source: str, hint: str = DEFAULT_HINT, where: str = "solution cell") -> str:
    """The stub that replaces a solution cell: its imports, ``answer = None  # TODO: hint``, its check call.

    >>> print(stub_source("answer = 2 + 2\\ncheck_sum(answer)", "add two and two"))
    answer = None  # TODO: add two and two
    check_sum(answer)
    """
    imports, check, variable = _check_call(solution_source, where)
    return "\n".join([*imports, f"{variable} = None  # TODO: {hint}", check])


def exercise_hint(cells: list, index: int) -> str:
    """The first sentence of the exercise that the solution cell ``cells[index]`` answers.

    A first line ``# solution: <text>`` that names no exercise number is the hint itself.
    Otherwise it looks in the nearest Markdown cell above: a ``**Exercise N.**`` paragraph (the
    last one, or the one whose number a ``# solution: exercise N`` comment names), or else item N
    of a numbered list (N from that comment, or counting the solution cells since the Markdown
    cell). Falls back to a generic hint.
    """
    first_line = cells[index].source.split("\n", 1)[0].strip()
    named = _SOLUTION_NUMBER.search(first_line)
    comment = _SOLUTION_COMMENT.match(first_line)
    if comment and comment.group(1).strip() and not named:
        return _first_sentence(comment.group(1))
    solutions_since = 0
    for j in range(index - 1, -1, -1):
        cell = cells[j]
        if cell.cell_type == "code" and SOLUTION_TAG in cell.metadata.get("tags", []):
            solutions_since += 1
        if cell.cell_type != "markdown":
            continue
        bold = {int(n): text for n, text in _EXERCISE_BOLD.findall(cell.source)}
        if bold:
            number = int(named.group(1)) if named and int(named.group(1)) in bold else max(bold)
            return _first_sentence(bold[number]) or DEFAULT_HINT
        if "exercise" not in cell.source.lower():
            continue
        text = cell.source.split("Exercises", 1)[-1]
        items = {int(n): body for n, body in _NUMBERED_ITEM.findall(text)}
        number = int(named.group(1)) if named else solutions_since + 1
        if number in items:
            return _first_sentence(items[number]) or DEFAULT_HINT
        return DEFAULT_HINT
    return DEFAULT_HINT


def _has_own_stub(cells: list, index: int, check: str, variable: str) -> bool:
    """Whether the code cell just before ``cells[index]`` already is the learner's stub for this check."""
    for j in range(index - 1, -1, -1):
        cell = cells[j]
        if cell.cell_type != "code":
            continue
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            return False
        source = cell.source
        return check.strip() in source and re.search(rf"^{re.escape(variable)}\s*=\s*None\b", source, re.M) is not None
    return False


def _relink(markdown: str, notebooks_dir: Path, out_dir: Path, built: set[str]) -> str:
    """Rewrite relative link targets so they resolve from ``out_dir`` as they did from ``notebooks_dir``."""

    def fix(match: re.Match) -> str:
        target = match.group(2)
        path, _, anchor = target.partition("#")
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path, re.I) or path.startswith("/") or path in built:
            return match.group(0)
        new = os.path.relpath(notebooks_dir / path, out_dir).replace(os.sep, "/")
        return f"{match.group(1)}{new}{'#' + anchor if anchor else ''}{match.group(3)}"

    return _MARKDOWN_LINK.sub(fix, markdown)


def student_notebook(nb, name: str = "notebook"):
    """A student copy of the notebook ``nb`` (an ``nbformat`` node): solutions stubbed, no outputs.

    ``nb`` itself is not changed. ``name`` only appears in error messages.
    """
    student = copy.deepcopy(nb)
    cells = []
    for index, cell in enumerate(student.cells):
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            tags = cell.metadata.get("tags", [])
            if SOLUTION_TAG in tags:
                where = f"{name}, cell {index}"
                _, check, variable = _check_call(cell.source, where)
                if _has_own_stub(student.cells, index, check, variable):
                    continue  # the notebook already shows the learner a stub for this check
                cell.source = stub_source(cell.source, exercise_hint(student.cells, index), where)
                cell.metadata["tags"] = [EXERCISE_TAG if t == SOLUTION_TAG else t for t in tags]
        cells.append(cell)
    student.cells = cells
    student.metadata.setdefault("course", {})["student"] = True
    return student


def build_student(notebooks_dir: Path | None = None, out_dir: Path | None = None) -> list[Path]:
    """Write the student build of every course notebook; return the written paths.

    Defaults: ``notebooks/`` to ``build/student/`` under the repository root. The folder is
    replaced as a whole (built beside it, then renamed), so it never holds a half build.
    """
    root = get_settings().repo_root
    notebooks_dir = Path(notebooks_dir or root / "notebooks").resolve()
    out_dir = Path(out_dir or root / STUDENT_DIR).resolve()
    sources = notebook_paths(notebooks_dir)
    if not sources:
        raise FileNotFoundError(f"no course notebooks (NN_*.ipynb) in {notebooks_dir}")
    built = {p.name for p in sources}
    with build_folder(out_dir) as staging:
        for path in sources:
            nb = student_notebook(nbformat.read(path, as_version=4), path.name)
            for cell in nb.cells:
                if cell.cell_type == "markdown":
                    cell.source = _relink(cell.source, notebooks_dir, out_dir, built)
            nbformat.write(nb, staging / path.name)
    return [out_dir / p.name for p in sources]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.student", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, metavar="DIR", help=f"where to write the build (default: {STUDENT_DIR})")
    parser.add_argument("--if-missing", action="store_true",
                        help="build only when the folder does not exist yet (make lab: a learner's answers are kept)")
    args = parser.parse_args(argv)
    out = Path(args.out or get_settings().repo_root / STUDENT_DIR)
    if args.if_missing and out.is_dir():
        print(f"keeping the student notebooks in {out} (your answers); `make student` rebuilds them from scratch")
        return 0
    try:
        written = build_student(out_dir=args.out)
    except (StubError, FileNotFoundError) as error:
        print(f"student build failed: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} student notebooks to {written[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
