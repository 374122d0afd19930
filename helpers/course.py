"""``make course``: execute every notebook in order, headless, in the current mode.

Saves executed copies and HTML exports under ``artifacts/executed/<mode>/``, then prints a
summary table: notebook, status, seconds, and the key figures each notebook recorded with
:func:`record_figures`. On a failure it stops and names the notebook and the cell.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from helpers.settings import get_settings

FIGURES_DIR = "figures"  # under artifacts/


def record_figures(notebook: str, **figures: float | int | str) -> dict:
    """Record a notebook's key figures (shown by ``make course``'s summary) and return them.

    Every notebook ends by calling this, e.g. ``record_figures("01", mse=1.2)``.
    """
    folder = get_settings().artifacts_dir / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{notebook}.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return figures


def notebook_paths(notebooks_dir: Path | None = None) -> list[Path]:
    """The course notebooks in order (``00_…`` to ``06_…``)."""
    folder = notebooks_dir or get_settings().repo_root / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def _failing_cell(nb) -> tuple[int, str]:
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return index, f"{output.get('ename')}: {output.get('evalue')}"
    return -1, "unknown error"


def _format_figures(figures: dict) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in figures.items())


def run_course(timeout_per_cell: int = 1800) -> int:
    """Execute all notebooks; return 0 when every one ran, 1 after the first failure."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    settings = get_settings()
    out_dir = settings.artifacts_dir / "executed" / settings.mode
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, status = [], 0
    for path in notebook_paths():
        print(f"running {path.name} in {settings.mode} mode ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout_per_cell, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        try:
            client.execute()
            ok = True
        except CellExecutionError:
            ok = False
        seconds = time.perf_counter() - start
        nbformat.write(nb, out_dir / path.name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out_dir / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
        figures_file = settings.artifacts_dir / FIGURES_DIR / f"{path.stem[:2]}.json"
        figures = json.loads(figures_file.read_text()) if ok and figures_file.exists() else {}
        rows.append((path.name, "ok" if ok else "FAILED", seconds, _format_figures(figures)))
        if not ok:
            index, error = _failing_cell(nb)
            source = nb.cells[index].source.splitlines()[0] if index >= 0 and nb.cells[index].source else ""
            print(f"\n{path.name} failed in cell {index} ({source!r}): {error}", file=sys.stderr)
            print(f"the executed copy with the traceback is {out_dir / path.name}", file=sys.stderr)
            status = 1
            break
    (out_dir / "timings.json").write_text(json.dumps({name: round(sec, 1) for name, _, sec, _ in rows}, indent=1) + "\n")
    width = max(len(r[0]) for r in rows)
    print(f"\n{'notebook':<{width}}  status  seconds  key figures")
    for name, state, seconds, figures in rows:
        print(f"{name:<{width}}  {state:<6}  {seconds:7.1f}  {figures}")
    print(f"\nexecuted copies and HTML: {out_dir}")
    return status


if __name__ == "__main__":
    sys.exit(run_course())
