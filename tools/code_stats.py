"""Where the course's code lives: notebook code against helpers code, the longest helpers functions,
import cycles in ``helpers/`` and repeated code.

The lesson's code belongs in the notebooks (CONTRIBUTING.md, rule 6), so the course tracks:
the ratio of code lines in the notebooks' code cells to code lines in ``helpers/`` (a code line
is neither blank nor only a comment; docstring lines count, and are also shown apart); the
longest functions in ``helpers/``, none of which should pass 60 lines; the import cycles among
``helpers/`` modules (an import inside a function counts: it only hides the cycle), of which
there should be none; and, when the ``duplicates`` tool is on PATH, the pairs of places in
``helpers/`` that share six or more lines. ``--check`` makes the command fail (exit 1) when the
ratio, the function length or the cycles miss their target.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIN_RATIO = 0.5  # notebook code lines per helpers code line that issue 30 asks for
MAX_FUNCTION_LINES = 60  # CONTRIBUTING.md: no function in helpers/ over 60 lines


@dataclass(frozen=True)
class Function:
    where: str  # e.g. "helpers/data.py:prepare"
    lines: int


def code_lines(source: str) -> int:
    """Lines of ``source`` that are neither blank nor only a comment."""
    return sum(1 for line in source.splitlines() if line.strip() and not line.strip().startswith("#"))


def notebook_code_lines(notebooks_dir: Path) -> int:
    """Code lines in the code cells of the course notebooks (``NN_*.ipynb``) in ``notebooks_dir``."""
    total = 0
    for path in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                source = cell["source"]  # nbformat 4 stores it as one string or as a list of lines
                total += code_lines(source if isinstance(source, str) else "".join(source))
    return total


def _docstring_lines(tree: ast.Module) -> int:
    total = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                total += first.end_lineno - first.lineno + 1
    return total


def _functions(tree: ast.Module, where: str) -> list[Function]:
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append(Function(f"{where}:{name}", child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def package_stats(package_dir: Path) -> tuple[int, int, list[Function]]:
    """(code lines, of which docstring lines, every function longest first) of the ``*.py`` files under ``package_dir``."""
    lines = docstrings = 0
    functions: list[Function] = []
    for path in sorted(package_dir.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        lines += code_lines(source)
        docstrings += _docstring_lines(tree)
        functions += _functions(tree, path.relative_to(package_dir.parent).as_posix())
    return lines, docstrings, sorted(functions, key=lambda f: (-f.lines, f.where))


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_between(package_dir: Path) -> dict[str, set[str]]:
    """Which modules of the package each module imports, anywhere in the file (module -> modules)."""
    root = package_dir.parent
    modules = {_module_name(path, root): path for path in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from helpers import cards`` imports the module helpers.cards, else the package helpers
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a loop (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def duplicate_pairs(package_dir: Path) -> list[str]:
    """The ``duplicates`` tool's report on ``package_dir`` (empty when the tool is not on PATH)."""
    tool = shutil.which("duplicates")
    if tool is None:
        return []
    done = subprocess.run([tool, "--repo", str(package_dir), "--most", "40"], capture_output=True, text=True, timeout=120)
    return done.stdout.strip().splitlines()


def report(root: Path = REPO, top: int = 10) -> tuple[str, bool]:
    """The printed report and whether the ratio, the function length and the cycles meet their targets."""
    notebook_lines = notebook_code_lines(root / "notebooks")
    helper_lines, docstrings, functions = package_stats(root / "helpers")
    ratio = notebook_lines / helper_lines
    too_long = [f for f in functions if f.lines > MAX_FUNCTION_LINES]
    cycles = import_cycles(imports_between(root / "helpers"))
    duplicates = duplicate_pairs(root / "helpers")
    shown = functions[: max(top, len(too_long))]
    width = max((len(f.where) for f in shown), default=0)
    out = [
        "code lines (neither blank nor only a comment)",
        f"  notebooks/NN_*.ipynb code cells  {notebook_lines:6,}",
        f"  helpers/**/*.py                  {helper_lines:6,}  (of which docstrings {docstrings:,})",
        f"  notebook : helpers               {ratio:6.2f}  (target >= {MIN_RATIO}{'' if ratio >= MIN_RATIO else ': NOT MET'})",
        "",
        f"longest functions in helpers/ ({len(too_long)} over {MAX_FUNCTION_LINES} lines)",
        *(f"  {f.lines:4}  {f.where:<{width}}  OVER {MAX_FUNCTION_LINES}" if f.lines > MAX_FUNCTION_LINES
          else f"  {f.lines:4}  {f.where}" for f in shown),
        "",
        f"import cycles in helpers/ ({len(cycles)}; imports inside functions count)",
        *(f"  {' <-> '.join(group)}" for group in cycles),
        "",
        "repeated code in helpers/ (duplicates --repo helpers)" if duplicates
        else "repeated code in helpers/: the duplicates tool is not on PATH",
        *(f"  {line}" for line in duplicates),
    ]
    return "\n".join(out), ratio >= MIN_RATIO and not too_long and not cycles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.code_stats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=10, metavar="N", help="how many of the longest functions to list (default 10)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    text, met = report(top=args.top)
    print(text)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
