"""The code a notebook defines, loaded from its cells so that tests check exactly what a learner reads.

A notebook writes its lesson's functions in its own cells (CONTRIBUTING.md, rule 6). To test them
against references nobody here wrote, :func:`notebook_definitions` runs, in notebook order, only the
import statements and ``def`` statements of the notebook's code cells, plus the top-level
assignments to the names in ``constants`` (the tables and patterns those functions read). No other
statement runs: no figure is drawn, no model is loaded, no lesson experiment is repeated.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import nbformat

from helpers.settings import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def _kept(node: ast.stmt, constants: set[str]) -> bool:
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
        return True
    targets = node.targets if isinstance(node, ast.Assign) else []
    return any(isinstance(target, ast.Name) and target.id in constants for target in targets)


def notebook_definitions(name: str, constants: Iterable[str] = (), namespace: dict | None = None) -> dict:
    """Run the imports, functions and ``constants`` assignments of ``notebooks/<name>``; return the namespace.

    ``namespace`` seeds the names the kept statements need but the notebook makes elsewhere (its
    ``settings``, say). Raises ``KeyError`` naming a constant that the notebook never assigns.
    """
    path: Path = NOTEBOOKS / name
    constants = set(constants)
    namespace = {} if namespace is None else namespace
    assigned: set[str] = set()
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type != "code":
            continue
        lines = [line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))]  # magics
        kept = [node for node in ast.parse("\n".join(lines)).body if _kept(node, constants)]
        assigned |= {t.id for node in kept if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
        exec(compile(ast.Module(body=kept, type_ignores=[]), f"{path.name}, cell {index}", "exec"), namespace)
    missing = constants - assigned
    if missing:
        raise KeyError(f"{path.name} never assigns {sorted(missing)} at the top level of a code cell")
    return namespace
