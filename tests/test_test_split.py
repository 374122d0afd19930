"""No choice reads a test split: 05, 06 and 11 run, in smoke mode, with the test split locked until their final report.

Each notebook marks the one cell that scores its test split, after every choice is made, with
the comment ``MARKER``. The kernel first replaces ``PreparedData.tokens`` (which ``documents``
and ``dataset`` read through) by a spy that raises when the ``test`` split is read, then runs every
code cell *before* that marker. A selection, a gate or a stopping rule that read Hamlet would stop
the notebook with the spy's error, and this test would fail naming the cell. The cells from the
marker on are not run here (nbval runs each whole notebook); the test also fails if the marker
is gone, so it can never pass by having nothing to check.
"""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.notebook_code import NOTEBOOKS

MARKER = "# Scored once: the test split"
SPY = '''
import helpers.data as _data
_read_split = _data.PreparedData.tokens
def _locked(self, split):
    if split == "test":
        raise AssertionError("the test split was read before the final report: a choice must read validation data")
    return _read_split(self, split)
_data.PreparedData.tokens = _locked
'''


@pytest.mark.parametrize("name", ["05_finetuning_gpt2.ipynb", "06_lora.ipynb", "11_iteration.ipynb"])
def test_nothing_before_the_final_report_reads_the_test_split(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    marked = [i for i, cell in enumerate(code) if cell.source.lstrip().startswith(MARKER)]
    assert len(marked) == 1, f"{name} must mark exactly one cell, its final report, with {MARKER!r}"
    assert any('tokens("test")' in cell.source for cell in code[marked[0] :]), f"{name}'s marked cell reads no test split"
    before = [nbformat.v4.new_code_cell(SPY)] + code[: marked[0]]
    run = nbformat.v4.new_notebook(cells=before, metadata=nb.metadata)
    client = NotebookClient(run, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{name}: a cell before the final report failed (the test split read early?):\n{error}")


def test_the_spy_stops_a_cell_that_reads_the_test_split():
    cells = [nbformat.v4.new_code_cell(SPY), nbformat.v4.new_code_cell(
        "from helpers.data import prepare\nprepare(progress=False).tokens('validation')"),
        nbformat.v4.new_code_cell("prepare(progress=False).documents('test')")]
    client = NotebookClient(nbformat.v4.new_notebook(cells=cells), timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    with pytest.raises(CellExecutionError, match="the test split was read before the final report"):
        client.execute()
