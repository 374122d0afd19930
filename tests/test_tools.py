"""The maintainers' command lines: every entry parses its arguments, the course runner, the code figures.

Each command-line entry is run as ``python -m`` runs it, in a separate interpreter: ``--help``
prints its usage and exits 0 without doing the work, an unknown flag is an error (exit 2) that
names the flag. ``helpers.serving`` is tested with the service.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest

from helpers.settings import get_settings
from tools import code_stats, constraints
from tools.course import notebook_number, parse_args, run_course, select_notebooks

ROOT = get_settings().repo_root
ENTRIES = {  # module: the arguments it requires, so that only the unknown flag can be the error
    "tools.course": [],
    "tools.student": [],
    "tools.code_stats": [],
    "tools.constraints": [],
    "tools.collect_data": [],
    "tools.pretrain_tiny_base": [],
    "tools.export": [],
    "tools.gpu_check": [],
    "bench": [],
    "helpers.training": ["--out", "never-written"],
    "helpers.serving": ["--model", "never-read"],
}
# One fresh interpreter runs every entry as `python -m` would (runpy, as __main__, with sys.argv
# set), twice each: torch and transformers are imported once instead of fourteen times.
DRIVER = """
import contextlib, io, json, runpy, sys
results = {}
for module, required in json.loads(sys.argv[1]).items():
    for case, args in (("help", ["--help"]), ("unknown flag", [*required, "--no-such-flag"])):
        print("python -m", module, *args, file=sys.__stderr__, flush=True)  # the last line names a hang
        out, err, code = io.StringIO(), io.StringIO(), "no exit: it went on to do the work"
        sys.argv = [module, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as stop:
                code = stop.code
        results[f"{module} {case}"] = {"code": code, "out": out.getvalue(), "err": err.getvalue()}
print(json.dumps(results))
"""
DRIVER_S = 300  # every entry, torch and transformers imported once, on a loaded 2-core machine


@pytest.fixture(scope="module")
def command_lines() -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(ENTRIES)], cwd=ROOT, text=True,
                              capture_output=True, timeout=DRIVER_S)
    except subprocess.TimeoutExpired as stop:
        pytest.fail(f"still running after {DRIVER_S} s; the last command started: {stop.stderr.splitlines()[-1:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", ENTRIES)
def test_every_entry_has_help_and_rejects_an_unknown_flag(module, command_lines):
    helped, rejected = command_lines[f"{module} help"], command_lines[f"{module} unknown flag"]
    assert helped["code"] == 0, helped
    assert helped["out"].startswith("usage:"), helped["out"][:300]
    assert rejected["code"] == 2, rejected
    assert "unrecognized arguments: --no-such-flag" in rejected["err"], rejected["err"][-2000:]


# --- tools.course -------------------------------------------------------------------------------


def test_notebooks_are_named_by_number_or_file():
    assert [notebook_number(t) for t in ("3", "03", "03_inside_gpt2.ipynb", "notebooks/03_inside_gpt2.ipynb")] == ["03"] * 4
    with pytest.raises(Exception, match="names no notebook"):
        notebook_number("inside")


def test_course_selection_and_its_errors(tmp_path, capsys):
    for name in ("00_a.ipynb", "01_b.ipynb", "02_c.ipynb"):
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / name)
    assert [p.name for p in select_notebooks([], "01", tmp_path)] == ["01_b.ipynb", "02_c.ipynb"]
    assert [p.name for p in select_notebooks(["02", "00"], "00", tmp_path)] == ["00_a.ipynb", "02_c.ipynb"]
    with pytest.raises(ValueError, match="no notebook numbered 10; the course has 00, 01, 02"):
        select_notebooks(["10"], "00", tmp_path)
    for wrong, message in ((["--in-place"], "name the ones to run"), (["--map", "03"], "give them alone")):
        with pytest.raises(SystemExit) as stop:
            parse_args(wrong)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_in_place_writes_outputs_back_and_stops_at_the_first_failure(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("COURSE_ARTIFACTS", str(tmp_path / "artifacts"))
    get_settings.cache_clear()
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    sources = {"01_ok.ipynb": "print(6 * 7)", "02_fails.ipynb": "1 / 0", "03_never.ipynb": "print('reached')"}
    for name, source in sources.items():
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)]), notebooks / name)
    untouched = (notebooks / "02_fails.ipynb").read_bytes()
    try:
        status = run_course(select_notebooks([], notebooks_dir=notebooks), timeout_per_cell=60, in_place=True)
    finally:
        get_settings.cache_clear()
    printed = capfd.readouterr()  # the kernels' own stderr included: they write to this process's descriptors

    assert status == 1
    written = nbformat.read(notebooks / "01_ok.ipynb", as_version=4).cells[0]
    assert written.outputs[0]["text"] == "42\n"
    assert "execution" not in written.metadata, "the run's timestamps are read for the slowest cells, then dropped"
    assert re.search(r"ran in [\d.]+ s \(slowest: cell 0 [\d.]+ s\)", printed.out)
    assert (notebooks / "02_fails.ipynb").read_bytes() == untouched, "a failed run must not rewrite the notebook"
    assert "02_fails.ipynb failed in cell 0" in printed.err and "ZeroDivisionError" in printed.err
    assert "03_never" not in printed.out, "the runner stops at the first failure"
    assert "without encryption" not in printed.err, "the kernel warned about its transport (see tools.course.kernel_config)"


# --- tools.code_stats ---------------------------------------------------------------------------


def test_code_stats_counts_code_lines_and_flags_long_functions(tmp_path):
    (tmp_path / "notebooks").mkdir()
    cells = [nbformat.v4.new_code_cell("# a comment\nx = 1\n\ny = 2"), nbformat.v4.new_markdown_cell("x = 3"),
             nbformat.v4.new_code_cell("%pip install nothing")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "notebooks" / "01_a.ipynb")
    (tmp_path / "helpers" / "serving").mkdir(parents=True)
    (tmp_path / "helpers" / "short.py").write_text('"""Doc."""\n\n\ndef f():\n    # why\n    return 1\n')
    limit = code_stats.MAX_FUNCTION_LINES
    long_body = "\n".join(f"        x{i} = {i}" for i in range(limit))
    (tmp_path / "helpers" / "serving" / "app.py").write_text(f"class A:\n    def run(self):\n{long_body}\n")

    text, met = code_stats.report(tmp_path)

    helpers_lines = 3 + limit + 2  # short.py, and app.py's class and def lines around the body; subfolders too
    assert re.search(r"code cells\s+3\n", text)  # two lines of the first cell, the magic of the last; no Markdown
    assert re.search(rf"helpers/\*\*/\*\.py\s+{helpers_lines}\s+\(of which docstrings 1\)", text)
    assert re.search(rf"notebook : helpers\s+{3 / helpers_lines:.2f}\s+\(target >= {code_stats.MIN_RATIO}: NOT MET\)",
                     text) and not met
    assert re.search(rf"^\s+{limit + 1}\s+helpers/serving/app.py:A.run\s+OVER {limit}$", text, re.M)
    assert re.search(r"^\s+3\s+helpers/short.py:f$", text, re.M) and text.count(f"OVER {limit}") == 1


def test_code_stats_finds_import_cycles_even_through_imports_inside_functions(tmp_path):
    helpers = tmp_path / "helpers"
    (helpers / "sub").mkdir(parents=True)
    (helpers / "__init__.py").write_text("")
    (helpers / "a.py").write_text("from helpers.b import x\n")
    (helpers / "b.py").write_text("def x():\n    from helpers import a\n")  # hidden in a function: still a cycle
    (helpers / "c.py").write_text("import helpers.a\n")  # imports into the cycle, is not part of it
    (helpers / "sub" / "__init__.py").write_text("from helpers.sub.d import y\n")
    (helpers / "sub" / "d.py").write_text("from helpers.sub import e\ny = 1\n")  # d -> e only: no cycle
    (helpers / "sub" / "e.py").write_text("")

    graph = code_stats.imports_between(helpers)

    assert graph["helpers.b"] == {"helpers.a"} and graph["helpers.sub.d"] == {"helpers.sub.e"}
    assert code_stats.import_cycles(graph) == [["helpers.a", "helpers.b"]]


def test_code_stats_runs_on_the_course():
    text, _ = code_stats.report()
    assert "notebook : helpers" in text and "longest functions in helpers/" in text


# --- tools.constraints --------------------------------------------------------------------------


def test_what_only_torch_needs_is_left_to_torch():
    graph = {
        "torch": {"sympy", "jinja2", "filelock"},
        "sympy": {"mpmath"},
        "mpmath": set(),
        "jinja2": {"markupsafe"},
        "markupsafe": set(),
        "filelock": set(),
        "nbconvert": {"jinja2"},  # shared: stays pinned, and so does what it needs
        "transformers": {"filelock"},
    }
    assert constraints.only_needed_by("torch", graph) == {"sympy", "mpmath"}


def test_committed_constraints_pin_every_declared_dependency_but_torch():
    text = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    odd = [line for line in lines if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+", line)]
    assert not odd, f"constraints.txt lines that are not name==version: {odd} (rerun `make constraints`)"
    pinned = {constraints.canonical(line.split("==")[0]) for line in lines}
    assert "torch" not in pinned and constraints.PROJECT not in pinned
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    names = {constraints.canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group(0)) for r in declared} - {"torch"}
    assert not names - pinned, f"declared but not pinned: {sorted(names - pinned)}; install them, then `make constraints`"
