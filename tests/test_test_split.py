"""No choice reads a test split: 05, 06 and 11 shut it before any choice and open it for their final report.

Each notebook calls ``lock_test_split()`` in its set-up cell and ``lock_test_split(False)`` only in
the one cell that scores its test split, marked with ``MARKER``. While shut, reading the split
raises :class:`helpers.data.SplitLockedError`, so a selection, a gate or a stopping rule that read
Hamlet early would stop the notebook, and nbval, which runs every notebook whole, would fail
naming the cell. These tests check that the notebooks are wired so, and that the lock locks.
"""

from __future__ import annotations

import nbformat
import pytest

from helpers import data
from tests.notebook_code import NOTEBOOKS

MARKER = "# Scored once: the test split"
SHUT, OPEN = "lock_test_split()", "lock_test_split(False)"


@pytest.mark.parametrize("name", ["05_finetuning_gpt2.ipynb", "06_lora.ipynb", "11_iteration.ipynb"])
def test_the_test_split_is_shut_until_the_final_report(name):
    code = [cell.source for cell in nbformat.read(NOTEBOOKS / name, as_version=4).cells if cell.cell_type == "code"]
    marked = [i for i, source in enumerate(code) if source.lstrip().startswith(MARKER)]
    assert len(marked) == 1, f"{name} must mark exactly one cell, its final report, with {MARKER!r}"
    first_read = min(i for i, source in enumerate(code) if 'tokens("test")' in source or "documents(\"test\")" in source)
    shut = [i for i, source in enumerate(code) if SHUT in source]
    opened = [i for i, source in enumerate(code) if OPEN in source]
    assert shut and shut[0] <= 1, f"{name} must shut the test split in its set-up cell"
    assert opened == marked, f"{name} may open the test split only in its final report"
    assert first_read >= marked[0], f"{name} reads the test split in code cell {first_read}, before its final report"
    report = code[marked[0]]
    assert report.index(OPEN) < report.index('tokens("test")'), f"{name} opens the split after reading it"


def test_a_shut_test_split_cannot_be_read(monkeypatch):
    monkeypatch.setattr(data, "_locked_splits", set())
    prepared = data.prepare(progress=False)
    data.lock_test_split()
    assert len(prepared.tokens("validation")) > 0  # the other splits stay open
    for read in (lambda: prepared.tokens("test"), lambda: prepared.documents("test"), lambda: prepared.dataset("test")):
        with pytest.raises(data.SplitLockedError, match="locked until the final report"):
            read()
    data.lock_test_split(False)
    assert len(prepared.tokens("test")) > 0
