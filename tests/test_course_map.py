"""The course's map and conventions: README in sync with the notebooks, every notebook shaped alike.

The README's course map is generated from each notebook's ``course`` metadata
(``make map``); these tests fail when the two disagree, when a notebook lacks a part of
CONTRIBUTING.md's shape (title cell, Colab cell, summary, exercises, ``record_figures``), or
when a link into GLOSSARY.md points nowhere. They read files only: no notebook is run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from helpers.settings import VALID_MODES, get_settings
from tools.course import (
    MAP_END,
    MAP_START,
    course_map_markdown,
    merge_measured_minutes,
    notebook_paths,
)

ROOT = get_settings().repo_root
NOTEBOOKS = notebook_paths()
GLOSSARY = ROOT / "GLOSSARY.md"
GLOSSARY_TERMS = [  # what the course uses and the glossary must explain (issue 10)
    "token", "tokenizer", "BPE", "vocabulary", "logits", "softmax", "cross-entropy",
    "negative log-likelihood", "perplexity", "MSE", "gradient", "gradient descent", "learning rate",
    "SGD", "momentum", "AdamW", "weight decay", "warmup", "cosine schedule", "gradient clipping",
    "gradient accumulation", "mixed precision", "bf16", "fp16", "grad scaler",
    "block size and context length", "end-of-text token", "fine-tuning", "pretraining", "checkpoint",
    "epoch", "overfitting", "validation and test splits", "sliding window", "stride",
    "bootstrap confidence interval", "decoding", "greedy decoding", "beam search", "temperature",
    "top-k", "top-p", "repetition penalty", "quantization", "int8", "safetensors", "DDP", "MFU", "API",
    "SSE streaming", "model registry", "promotion gate", "catastrophic forgetting", "replay",
]


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _number(path: Path) -> str:
    return path.name[:2]


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no NN_*.ipynb notebooks in {ROOT / 'notebooks'}"


# --- the README's course map --------------------------------------------------------------


def test_readme_course_map_is_generated_from_the_notebooks():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MAP_START in readme and MAP_END in readme, "README.md lacks the course-map markers"
    block = readme.split(MAP_START, 1)[1].split(MAP_END, 1)[0].strip("\n")
    assert block == course_map_markdown(), (
        "README.md's course map disagrees with the notebooks' `course` metadata: run `make map` "
        "(after `make course`, to bring in measured minutes) and commit README.md"
    )


def test_the_map_lists_every_notebook_with_all_its_minutes():
    table = course_map_markdown().splitlines()[2:]
    assert [re.search(r"\[`(.+?)`\]", row).group(1) for row in table] == [p.name for p in NOTEBOOKS]
    assert not [row for row in table if "?" in row.rsplit("|", 2)[-2]], "a notebook lacks minutes for a mode"


def test_measured_minutes_go_into_the_metadata_and_the_map(tmp_path):
    notebooks, executed = tmp_path / "notebooks", tmp_path / "executed"
    notebooks.mkdir()
    for name in ("01_a.ipynb", "02_b.ipynb"):
        nb = nbformat.v4.new_notebook()
        nb.metadata["course"] = {"title": name, "objectives": ["x"], "prerequisites": [],
                                 "minutes": {"smoke": 1, "cpu": 1, "gpu": 9}}
        nbformat.write(nb, notebooks / name)
    untouched = (notebooks / "02_b.ipynb").read_bytes()
    ok = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    failed = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")])
    failed.cells[0].outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="", traceback=[])]
    for mode, timings in {"smoke": {"01_a.ipynb": 12.0}, "cpu": {"01_a.ipynb": 61.2, "02_b.ipynb": 30.0}}.items():
        (executed / mode).mkdir(parents=True)
        (executed / mode / "timings.json").write_text(json.dumps(timings))
        nbformat.write(ok, executed / mode / "01_a.ipynb")
        nbformat.write(failed, executed / mode / "02_b.ipynb")  # a failed run measures nothing

    measured = merge_measured_minutes(notebooks, executed)

    assert measured == {"01_a.ipynb": {"smoke": 1, "cpu": 2}}  # 61.2 s rounds up to 2 minutes
    assert _read(notebooks / "01_a.ipynb").metadata["course"]["minutes"] == {"smoke": 1, "cpu": 2, "gpu": 9}
    assert (notebooks / "02_b.ipynb").read_bytes() == untouched
    assert "| 1 / 2 / ~9 |" in course_map_markdown(notebooks).splitlines()[2]


def test_reading_minutes_go_into_the_title_line_and_the_map(tmp_path):
    notebooks, executed = tmp_path / "notebooks", tmp_path / "executed"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 01 · a\n\n**Estimated time**: old words")])
    nb.metadata["course"] = {"title": "a", "objectives": ["x"], "prerequisites": [], "reading_minutes": 45,
                             "minutes": {"smoke": 1, "cpu": 3, "gpu": 2}}
    nbformat.write(nb, notebooks / "01_a.ipynb")

    merge_measured_minutes(notebooks, executed)

    line = _read(notebooks / "01_a.ipynb").cells[0].source.splitlines()[-1]
    assert line == ("**Estimated time**: 45 min of reading and exercises; "
                    "compute 1 min in `smoke` mode · 3 min in `cpu` mode · ~2 min in `gpu` mode (an estimate)")
    assert course_map_markdown(notebooks).splitlines()[2].endswith("| 45 | 1 / 3 / ~2 |")


def test_gpu_minutes_are_estimates_until_a_gpu_run_measures_them(tmp_path):
    notebooks, executed = tmp_path / "notebooks", tmp_path / "executed"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 01 · a\n\n**Estimated time**: old words")])
    nb.metadata["course"] = {"title": "a", "objectives": ["x"], "prerequisites": [], "minutes": {"smoke": 1, "cpu": 3, "gpu": 25}}
    nbformat.write(nb, notebooks / "01_a.ipynb")
    assert course_map_markdown(notebooks).splitlines()[2].endswith("| 1 / 3 / ~25 |")
    (executed / "gpu").mkdir(parents=True)
    (executed / "gpu" / "timings.json").write_text(json.dumps({"01_a.ipynb": 130.0}))
    nbformat.write(nb, executed / "gpu" / "01_a.ipynb")  # ran without an error

    merge_measured_minutes(notebooks, executed)

    measured = _read(notebooks / "01_a.ipynb")
    assert measured.metadata["course"]["estimated"] == [] and measured.metadata["course"]["minutes"]["gpu"] == 3
    assert measured.cells[0].source.endswith("3 min in `gpu` mode")
    assert course_map_markdown(notebooks).splitlines()[2].endswith("| 1 / 3 / 3 |")


def test_unreadable_timings_are_a_clear_error(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "timings.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"timings\.json is not valid JSON.*make course"):
        merge_measured_minutes(tmp_path, tmp_path)


# --- every notebook follows CONTRIBUTING.md ------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_course_metadata_is_complete(path):
    meta = _read(path).metadata.get("course")
    assert isinstance(meta, dict), f"{path.name} has no `course` block in its notebook metadata"
    assert isinstance(meta.get("title"), str) and meta["title"].strip(), f"{path.name}: course.title"
    objectives = meta.get("objectives")
    assert isinstance(objectives, list) and objectives and all(isinstance(o, str) and o for o in objectives)
    prerequisites = meta.get("prerequisites")
    assert isinstance(prerequisites, list), f"{path.name}: course.prerequisites must be a list (maybe empty)"
    earlier = {p.stem for p in NOTEBOOKS if p.name < path.name}
    unknown = [p for p in prerequisites if p not in earlier]
    assert not unknown, f"{path.name}: prerequisites {unknown} are not earlier notebooks (use stems like '00_setup')"
    minutes = meta.get("minutes")
    assert isinstance(minutes, dict) and set(minutes) == set(VALID_MODES), f"{path.name}: minutes per mode {VALID_MODES}"
    assert all(isinstance(m, int) and m > 0 for m in minutes.values()), f"{path.name}: minutes must be whole numbers > 0"
    reading = meta.get("reading_minutes", 1)  # reading and exercises: each notebook's teacher adds it
    assert isinstance(reading, int) and reading > 0, f"{path.name}: course.reading_minutes must be a whole number > 0"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_title_cell_says_objectives_prerequisites_and_time(path):
    nb = _read(path)
    meta = nb.metadata.get("course", {})
    title = nb.cells[0]
    assert title.cell_type == "markdown", f"{path.name}: the first cell must be the Markdown title cell"
    assert title.source.splitlines()[0] == f"# {_number(path)} · {meta.get('title')}", (
        f"{path.name}: the title line should be '# {_number(path)} · <course.title>'"
    )
    text = title.source
    for part in ("Learning objectives", "Prerequisites", "Estimated time"):
        assert part in text, f"{path.name}: the title cell lacks *{part}*"
    objectives = text.split("Learning objectives", 1)[1].split("Prerequisites", 1)[0]
    bullets = re.findall(r"^[-*] ", objectives, re.M)
    assert len(bullets) == len(meta.get("objectives", [])), (
        f"{path.name}: {len(bullets)} objective bullets in the title cell, {len(meta.get('objectives', []))} in the metadata"
    )
    estimate = text.split("Estimated time", 1)[1].split("\n\n", 1)[0]
    numbers = {int(n) for n in re.findall(r"\b(\d+)\b", estimate)}
    stale = {mode: m for mode, m in meta.get("minutes", {}).items() if m not in numbers}
    if "reading_minutes" in meta and meta["reading_minutes"] not in numbers:
        stale["reading and exercises"] = meta["reading_minutes"]
    assert not stale, f"{path.name}: the title cell's estimated time does not mention the metadata's minutes {stale}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_second_cell_is_the_colab_cell_with_a_gpu_check(path):
    cell = _read(path).cells[1]
    assert cell.cell_type == "code", f"{path.name}: the second cell must be the Colab install cell"
    assert "google.colab" in cell.source, f"{path.name}: the Colab cell must run only on Colab (google.colab)"
    assert "torch.cuda.is_available()" in cell.source, f"{path.name}: the Colab cell must check for a GPU"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ends_with_summary_exercises_and_record_figures(path):
    nb = _read(path)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    summary = re.search(r"^#+ Summary\b", markdown, re.M)
    exercises = re.search(r"^#+ Exercises\b", markdown, re.M)
    assert summary and exercises and summary.start() < exercises.start(), (
        f"{path.name}: needs a '## Summary' heading and then a '## Exercises' heading"
    )
    last_code = [c for c in nb.cells if c.cell_type == "code"][-1].source
    assert re.search(rf"record_figures\(\s*\"{_number(path)}\"", last_code), (
        f'{path.name}: the last code cell must call record_figures("{_number(path)}", ...)'
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_figures_are_drawn(path):
    """A figure committed as only its text ("<Figure size ...>") shows nothing on GitHub: outputs
    must come from a kernel with the inline backend (make course sees to it)."""
    blank = [
        index for index, cell in enumerate(_read(path).cells) if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "<Figure size" in str(output.get("data", {}).get("text/plain", "")) and "image/png" not in output.get("data", {})
    ]
    assert not blank, f"{path.name}: cells {blank} hold figures without their image; re-run with `make course` (cpu mode)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_cells_carry_no_run_timings(path):
    """nbclient's per-cell timestamps change every cell at every run (a diff of noise); `make course`
    reads them for its slowest-cells line and strips them before it writes a notebook."""
    timed = [index for index, cell in enumerate(_read(path).cells) if "execution" in cell.get("metadata", {})]
    assert not timed, f"{path.name}: cells {timed} carry execution timestamps; re-run with `make outputs`"


# --- the glossary ---------------------------------------------------------------------------


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _glossary_anchors() -> dict[str, str]:
    text = GLOSSARY.read_text(encoding="utf-8")
    return {_anchor(h): h for h in re.findall(r"^## (.+)$", text, re.M)}


def test_anchor_rule_matches_github():
    assert _anchor("end-of-text token") == "end-of-text-token"
    assert _anchor("block size (context length)") == "block-size-context-length"
    assert _anchor("SSE streaming") == "sse-streaming"


def test_glossary_explains_every_course_term():
    anchors = _glossary_anchors()
    missing = [term for term in GLOSSARY_TERMS if _anchor(term) not in anchors]
    assert not missing, f"GLOSSARY.md has no '## term' heading for {missing}"
    text = GLOSSARY.read_text(encoding="utf-8")
    entries = re.split(r"^## ", text, flags=re.M)[1:]
    untaught = [e.splitlines()[0] for e in entries if "Taught in" not in e and "notebooks/" not in e]
    assert not untaught, f"GLOSSARY.md entries that name no notebook: {untaught}"
    headings = [e.splitlines()[0] for e in entries]
    assert len(headings) == len(set(headings)), f"GLOSSARY.md explains a term twice: {sorted({h for h in headings if headings.count(h) > 1})}"


def test_glossary_links_resolve():
    text = GLOSSARY.read_text(encoding="utf-8")
    anchors = _glossary_anchors()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path, _, anchor = target.partition("#")
        if path:
            assert (ROOT / path).exists(), f"GLOSSARY.md links to {path}, which does not exist"
        else:
            assert anchor in anchors, f"GLOSSARY.md links to #{anchor}, which is no heading there"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_links_into_the_glossary_resolve(path):
    markdown = "\n".join(c.source for c in _read(path).cells if c.cell_type == "markdown")
    links = re.findall(r"\]\(([^)\s]*GLOSSARY\.md[^)\s]*)\)", markdown)
    assert links, f"{path.name} never links to the glossary; link a term's first use, e.g. [perplexity](../GLOSSARY.md#perplexity)"
    anchors = _glossary_anchors()
    for link in links:
        file, _, anchor = link.partition("#")
        assert (path.parent / file).resolve() == GLOSSARY, f"{path.name}: {link} should point at ../GLOSSARY.md"
        assert not anchor or anchor in anchors, f"{path.name}: {link} names no heading of GLOSSARY.md"


def test_record_figures_stores_plain_numbers(tmp_path, monkeypatch):
    """NumPy scalars (a percentile, a mean) are recorded and shown as plain Python numbers."""
    import numpy as np

    from helpers.report import record_figures

    monkeypatch.setenv("COURSE_ARTIFACTS", str(tmp_path))
    get_settings.cache_clear()
    try:
        figures = record_figures("99", p50_ms=np.percentile([1.0, 2.0, 3.0], 50), steps=np.int64(3), model="tiny")
    finally:
        get_settings.cache_clear()
    assert figures == {"p50_ms": 2.0, "steps": 3, "model": "tiny"}
    assert type(figures["p50_ms"]) is float and type(figures["steps"]) is int
    assert json.loads((tmp_path / "figures" / "99.json").read_text()) == figures
