"""``python -m tools.export``: write the modules that notebooks define, from their tagged cells.

Some lessons are the code itself: notebook 03 builds GPT-2 in its cells, and later notebooks and
tests import that same code from ``helpers/gpt.py``. So the module is not a second copy kept by
hand: it is generated from the notebook's code cells tagged ``export`` (in notebook order, each
cell whole, below a header written here). ``tests/test_gpt.py`` fails while the module and the
notebook differ; run this command after editing an exported cell.

An exported cell may hold only imports, definitions (``def``, ``class``) and constants, so that
importing the module never runs a lesson's experiments.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

EXPORT_TAG = "export"

GPT_HEADER = '''"""GPT-2 from scratch in plain PyTorch, and generation by hand with a KV cache.

Introduced in ``notebooks/03_inside_gpt2.ipynb``, which writes and explains every line below.
GENERATED from that notebook's cells tagged ``export`` by ``python -m tools.export``: edit the
notebook, not this file (``tests/test_gpt.py`` fails while the two differ).

Reads like nanoGPT's ``model.py``: the configuration, attention, the MLP, the block, the model
(with :meth:`GPT.from_transformers`, which loads the weights of a transformers
``GPT2LMHeadModel``, and :meth:`GPT.to_transformers`, the way back, which notebook 04 uses),
then sampling, :func:`generate` and the :class:`KVCache`.
"""'''

# notebook (under notebooks/) -> (module under helpers/, the module's header)
EXPORTS: dict[str, tuple[str, str]] = {
    "03_inside_gpt2.ipynb": ("gpt.py", GPT_HEADER),
}
_ALLOWED = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


class ExportError(ValueError):
    """An exported cell that cannot go into a module (the message names the cell and why)."""


def exported_cells(notebook: Path) -> list[str]:
    """The sources of ``notebook``'s code cells tagged ``export``, in order, each checked to define only."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    sources = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or EXPORT_TAG not in cell.metadata.get("tags", []):
            continue
        where = f"{notebook.name}, cell {index}"
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as error:
            raise ExportError(f"{where}: an exported cell must be plain Python ({error.msg}, line {error.lineno})") from None
        for node in tree.body:
            if not isinstance(node, _ALLOWED):
                raise ExportError(
                    f"{where}, line {node.lineno}: an exported cell holds only imports, definitions and constants; "
                    f"move the {type(node).__name__.lower()} statement to a cell that is not tagged {EXPORT_TAG!r}"
                )
        sources.append(cell.source.strip("\n"))
    if not sources:
        raise ExportError(f"{notebook.name} has no code cell tagged {EXPORT_TAG!r}")
    return sources


def module_source(notebook: Path, header: str) -> str:
    """The text of the module generated from ``notebook``: the header, then each exported cell."""
    return header + "\n\n" + "\n\n\n".join(exported_cells(notebook)) + "\n"


def export_all(root: Path | None = None, check: bool = False) -> list[Path]:
    """Write every module in :data:`EXPORTS` (or, with ``check``, only list the stale ones); return the paths.

    Without ``check`` it returns the modules it rewrote; with ``check``, the ones that differ from their notebook.
    """
    from helpers.atomic import write_text_atomic
    from helpers.settings import REPO_ROOT

    root = Path(root or REPO_ROOT)
    changed = []
    for notebook, (module, header) in EXPORTS.items():
        path = root / "helpers" / module
        text = module_source(root / "notebooks" / notebook, header)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        changed.append(path)
        if not check:
            write_text_atomic(path, text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.split("\n\n")[0],
                                     epilog="Run it after editing a cell tagged 'export'.")
    parser.add_argument("--check", action="store_true", help="only report modules that differ from their notebook")
    args = parser.parse_args(argv)
    try:
        paths = export_all(check=args.check)
    except (ExportError, FileNotFoundError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    if args.check and paths:
        print(f"out of date: {', '.join(p.name for p in paths)}; run `python -m tools.export`", file=sys.stderr)
        return 1
    print(f"{'rewrote' if paths else 'up to date:'} {', '.join(p.name for p in paths) if paths else 'every module'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
