"""registry: versions round-trip, writes are atomic, damage is reported, the gate explains itself.

Fake release folders (a real safetensors file of a few random arrays, a config.json, a
tokenizer file) keep these tests fast: no model is trained or loaded.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from helpers import atomic, registry
from helpers.registry import (
    DamagedVersionError,
    RegistryError,
    UnknownVersionError,
    VersionExistsError,
)

HASHES = {"original": "a" * 64, "new_data": "b" * 64}
CONFIG = {"lr": 1e-3, "num_steps": 6, "resumed_from": "v1"}


@pytest.fixture
def make_release(tmp_path):
    """Build a fake release folder; each call gets different random weights."""
    counter = iter(range(1000))

    def make(name: str | None = None):
        index = next(counter)
        folder = tmp_path / "releases" / (name or f"release{index}")
        folder.mkdir(parents=True)
        rng = np.random.default_rng(index)  # small: two arrays, a few KB
        save_file({"wte": rng.standard_normal((16, 8)).astype(np.float32),
                   "ln_f.bias": rng.standard_normal(8).astype(np.float32)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
        (folder / "tokenizer.json").write_text('{"fake": true}')
        return folder

    return make


@pytest.fixture
def root(tmp_path):
    return tmp_path / "registry"


def reg(release, root, **kwargs):
    """Register with the usual metadata unless a test overrides it."""
    kwargs.setdefault("metrics", {"new_data_ppl": 50.0, "heldout_ppl": 40.0})
    return registry.register(release, data_manifest_hashes=HASHES, training_config=CONFIG, root=root, **kwargs)


def snapshot(folder):
    """Every file under ``folder`` with its bytes: equal snapshots mean nothing changed on disk."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- register, get, list


def test_register_copies_the_release_and_records_its_origin(make_release, root):
    release = make_release()
    entry = reg(release, root, metrics={"new_data_ppl": 50.0, "heldout_ppl": 40.0})

    assert entry.version == "v1" and entry.parent is None
    assert entry.model_dir == root / "versions" / "v1" / "model"
    comparison = filecmp.dircmp(release, entry.model_dir)
    assert sorted(comparison.same_files) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    # the copy is a real safetensors file: the library that wrote it reads it back unchanged
    original, copied = load_file(str(release / "model.safetensors")), load_file(str(entry.model_dir / "model.safetensors"))
    assert all(np.array_equal(original[k], copied[k]) for k in original)

    on_disk = json.loads((root / "versions" / "v1" / "entry.json").read_text())
    assert on_disk["weights_sha256"] == hashlib.sha256((release / "model.safetensors").read_bytes()).hexdigest()
    assert on_disk["data_manifest_hashes"] == HASHES
    assert on_disk["training_config"] == CONFIG
    assert on_disk["metrics"] == {"new_data_ppl": 50.0, "heldout_ppl": 40.0}
    created = datetime.fromisoformat(on_disk["created"])
    assert created.utcoffset() == timedelta(0)
    assert registry.get("v1", root=root) == entry


def test_versions_number_themselves_and_record_their_parent(make_release, root):
    first = reg(make_release(), root)
    second = reg(make_release(), root, parent=first.version)
    assert (first.version, second.version, second.parent) == ("v1", "v2", "v1")
    assert [(v.version, v.parent, v.problem) for v in registry.list_versions(root=root)] == [
        ("v1", None, None), ("v2", "v1", None)]


def test_listing_sorts_numbers_naturally_and_auto_versions_continue_after_the_highest(make_release, root):
    for name in ("v10", "v2", "baseline"):
        reg(make_release(), root, version=name)
    assert [v.version for v in registry.list_versions(root=root)] == ["baseline", "v2", "v10"]
    assert reg(make_release(), root).version == "v11"


def test_empty_registry_lists_nothing_and_has_no_current(root):
    assert registry.list_versions(root=root) == []
    assert registry.current(root=root) is None
    assert registry.format_table(registry.list_versions(root=root)) == "(no rows)"


def test_registry_root_defaults_to_the_artifacts_folder():
    assert registry.registry_root() == registry.get_settings().artifacts_dir / "registry"


def test_registering_an_existing_version_is_an_error_and_changes_nothing(make_release, root):
    reg(make_release(), root, version="v1")
    before = snapshot(root)
    with pytest.raises(VersionExistsError, match="'v1' is already registered"):
        reg(make_release(), root, version="v1")
    assert snapshot(root) == before


def test_bad_input_is_a_clear_error_and_writes_nothing(make_release, root, tmp_path):
    release = make_release()
    cases = [
        (FileNotFoundError, "does not exist", dict(release_dir=tmp_path / "nowhere")),
        (ValueError, "not a valid name", dict(version="../escape")),
        (UnknownVersionError, "parent 'v7' is not registered", dict(parent="v7")),
        (ValueError, r"metrics\['heldout_ppl'\] must be a number", dict(metrics={"heldout_ppl": "low"})),
        (ValueError, "training_config must hold only JSON values", dict(training_config={"fn": print})),
        (ValueError, "data_manifest_hashes must map names to hash strings", dict(data_manifest_hashes={"a": 1})),
    ]
    for error, message, override in cases:
        kwargs = dict(release_dir=release, data_manifest_hashes=HASHES, training_config=CONFIG,
                      metrics={"heldout_ppl": 40.0}, root=root) | override
        with pytest.raises(error, match=message):
            registry.register(**kwargs)
    no_weights = make_release()
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        reg(no_weights, root)
    assert registry.list_versions(root=root) == []


def test_get_unknown_version_names_the_registered_ones(make_release, root):
    reg(make_release(), root)
    with pytest.raises(UnknownVersionError, match=r"'v9' is not registered \(registered: v1\)"):
        registry.get("v9", root=root)


# --------------------------------------------------------------------------- promote, rollback, compare


def test_promote_and_rollback_walk_the_history(make_release, root):
    for _ in range(3):
        reg(make_release(), root)
    assert registry.promote("v1", root=root).version == "v1"
    registry.promote("v2", root=root)
    registry.promote("v2", root=root)  # promoting the current one again changes nothing
    registry.promote("v3", root=root)
    assert registry.current(root=root).version == "v3"
    assert registry.history(root=root) == ["v1", "v2", "v3"]
    assert [v.version for v in registry.list_versions(root=root) if v.is_current] == ["v3"]

    assert registry.rollback(root=root).version == "v2"
    assert registry.current(root=root).version == "v2"
    assert registry.rollback(root=root).version == "v1"
    assert registry.history(root=root) == ["v1", "v2", "v3", "v2", "v1"]  # a rollback never erases the history
    with pytest.raises(RegistryError, match="v1 is the first version promoted"):
        registry.rollback(root=root)
    pointer = json.loads((root / "current.json").read_text())
    assert pointer["version"] == "v1" and pointer["previous"] == [] and len(pointer["history"]) == 5


def test_rollback_then_roll_forward_then_rollback_again(make_release, root):
    """The finding: after one rollback the history read [], so the next rollback had nowhere to go."""
    for _ in range(2):
        reg(make_release(), root)
    registry.promote("v1", root=root)
    registry.promote("v2", root=root)
    assert registry.rollback(root=root).version == "v1"
    assert registry.history(root=root) == ["v1", "v2", "v1"]
    assert registry.promote("v2", root=root).version == "v2"  # roll forward
    assert registry.rollback(root=root).version == "v1"
    assert registry.history(root=root) == ["v1", "v2", "v1", "v2", "v1"]


def test_a_pointer_in_the_older_layout_is_read(make_release, root):
    for _ in range(2):
        reg(make_release(), root)
    (root / "current.json").write_text(json.dumps({"version": "v2", "history": ["v1"], "updated": "x"}))
    assert registry.history(root=root) == ["v1", "v2"]
    assert registry.rollback(root=root).version == "v1"


def test_rollback_before_any_promotion_is_a_clear_error(make_release, root):
    reg(make_release(), root)
    with pytest.raises(RegistryError, match="no version has been promoted yet"):
        registry.rollback(root=root)


def test_promoting_an_unknown_version_is_an_error(make_release, root):
    reg(make_release(), root)
    with pytest.raises(UnknownVersionError, match="'v2' is not registered"):
        registry.promote("v2", root=root)
    assert registry.current(root=root) is None


def test_compare_takes_the_union_of_metrics(make_release, root):
    reg(make_release(), root, metrics={"new_data_ppl": 50.0, "heldout_ppl": 40.0, "old_only": 1.0})
    reg(make_release(), root, metrics={"new_data_ppl": 45.0, "heldout_ppl": 40.4, "tokens_per_s": 900})
    rows = registry.compare("v1", "v2", root=root)
    assert [r.metric for r in rows] == ["new_data_ppl", "heldout_ppl", "old_only", "tokens_per_s"]
    new, held, old, speed = rows
    assert (new.a, new.b) == (50.0, 45.0)
    assert new.delta == pytest.approx(-5.0) and new.relative == pytest.approx(-0.10)
    assert held.delta == pytest.approx(0.4) and held.relative == pytest.approx(0.01)
    assert old == ("old_only", 1.0, None, None, None)
    assert speed == ("tokens_per_s", None, 900, None, None)
    text = registry.format_table(rows)
    assert "-10.0%" in text and "+1.0%" in text
    assert text.splitlines()[0].split() == ["metric", "v1", "v2", "delta", "relative"]  # columns named after the versions


# --------------------------------------------------------------------------- atomic writes


def test_a_register_interrupted_at_the_final_rename_leaves_the_registry_unchanged(make_release, root, monkeypatch):
    reg(make_release(), root)
    registry.promote("v1", root=root)
    before = snapshot(root)

    real_rename = Path.rename

    def crash_on_folder_rename(self, target):
        if "-building-" in self.name:
            raise OSError("simulated crash while renaming the new version into place")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_folder_rename)
    with pytest.raises(OSError, match="simulated crash"):
        reg(make_release(), root)
    monkeypatch.undo()

    assert snapshot(root) == before
    assert [p.name for p in (root / "versions").iterdir()] == ["v1"]  # the half-built copy is gone
    assert registry.current(root=root).version == "v1"


def test_a_register_interrupted_mid_copy_leaves_the_registry_unchanged(make_release, root, monkeypatch):
    reg(make_release(), root)
    before = snapshot(root)
    real_copytree = shutil.copytree

    def copy_then_fail(src, dst, **kwargs):
        real_copytree(src, dst, **kwargs)
        raise OSError("simulated disk full after copying")

    monkeypatch.setattr(registry.shutil, "copytree", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        reg(make_release(), root)
    assert snapshot(root) == before


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_promotion_interrupted_mid_write_keeps_the_old_pointer(make_release, root, monkeypatch, failing):
    reg(make_release(), root)
    reg(make_release(), root)
    registry.promote("v1", root=root)
    before = snapshot(root)

    def crash(*args):
        raise OSError(f"simulated crash in os.{failing}")

    monkeypatch.setattr(atomic.os, failing, crash)
    with pytest.raises(OSError, match="simulated crash"):
        registry.promote("v2", root=root)
    monkeypatch.undo()

    assert snapshot(root) == before  # no half-written current.json, no temporary file left
    assert registry.current(root=root).version == "v1"


def dead_pid() -> int:
    """The id of a process that has finished (and been reaped), as kill -9 leaves it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_process_are_listed_and_cleaned(make_release, root):
    reg(make_release(), root)
    registry.promote("v1", root=root)
    pid = dead_pid()
    stray = root / "versions" / f".v2-building-{atomic._host_tag()}-{pid}-deadbeef"  # what kill -9 mid-register leaves
    (stray / "model").mkdir(parents=True)
    (stray / "model" / "model.safetensors").write_bytes(b"half a file")
    torn = root / f".current.json-tmp-{atomic._host_tag()}-{pid}-deadbeef"
    torn.write_text('{"version": "v2", "hist')
    stranger = root / "versions" / ".tmp-v3-0badf00d"  # a hidden name no writer of the course gives: not running
    stranger.mkdir()
    running = atomic.temporary_name(root / "versions" / "v9", "building")  # this process: still writing
    running.mkdir()

    listed = {v.version: v.problem for v in registry.list_versions(root=root)}
    assert listed["v1"] is None
    assert "registry.clean() removes it" in listed[stray.name] and "registry.clean()" in listed[torn.name]
    assert "registry.clean()" in listed[stranger.name] and "running" in listed[running.name]
    assert registry.current(root=root).version == "v1"

    assert reg(make_release(), root).version == "v2"  # the next write cleans
    assert {p.name for p in (root / "versions").iterdir()} == {"v1", "v2", running.name}
    assert not torn.exists()
    assert registry.clean(root=root) == []
    running.rmdir()


def test_a_temporary_of_another_host_is_judged_by_its_age(tmp_path):
    """Its writer cannot be asked from here (a shared network folder): fresh it is running, after a minute orphaned."""
    other_host = "0" * 8 if atomic._host_tag() != "0" * 8 else "1" * 8
    path = tmp_path / f".v2-building-{other_host}-{os.getpid()}-deadbeef"
    path.mkdir()
    assert atomic.writer_state(path) == "running"
    old = datetime.now().timestamp() - 2 * atomic.STALE_AFTER_S
    os.utime(path, (old, old))
    assert atomic.writer_state(path) == "orphaned"


# --------------------------------------------------------------------------- damaged entries


def corrupt_json(entry):
    (entry.path / "entry.json").write_text('{"version": "v2", "metr')


def delete_entry(entry):
    (entry.path / "entry.json").unlink()


def delete_weights(entry):
    (entry.model_dir / "model.safetensors").unlink()


def flip_a_weight_byte(entry):
    path = entry.model_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def drop_a_field(entry):
    raw = json.loads((entry.path / "entry.json").read_text())
    del raw["weights_sha256"]
    (entry.path / "entry.json").write_text(json.dumps(raw))


DAMAGE = {
    corrupt_json: "entry.json is unreadable",
    delete_entry: "entry.json is missing",
    delete_weights: "weights file model/model.safetensors is missing",
    flip_a_weight_byte: "checksum mismatch",
    drop_a_field: "entry.json lacks 'weights_sha256'",
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=lambda f: f.__name__)
def test_a_damaged_version_is_reported_and_the_others_still_work(make_release, root, damage):
    for _ in range(3):
        reg(make_release(), root)
    damage(registry.get("v2", root=root))
    reason = DAMAGE[damage]

    listed = {v.version: v for v in registry.list_versions(root=root)}
    assert list(listed) == ["v1", "v2", "v3"]
    assert listed["v1"].problem is None and listed["v3"].problem is None
    assert reason in listed["v2"].problem
    assert reason in registry.format_table(list(listed.values()))

    with pytest.raises(DamagedVersionError, match=rf"version v2: .*{reason}"):
        registry.get("v2", root=root)
    with pytest.raises(DamagedVersionError, match="version v2"):
        registry.promote("v2", root=root)
    with pytest.raises(DamagedVersionError, match="version v2"):
        registry.compare("v1", "v2", root=root)

    registry.promote("v1", root=root)
    registry.promote("v3", root=root)
    assert registry.current(root=root).version == "v3"
    assert [r.metric for r in registry.compare("v1", "v3", root=root)] == ["new_data_ppl", "heldout_ppl"]


def test_a_current_version_damaged_later_is_reported_and_can_be_rolled_back(make_release, root):
    reg(make_release(), root)
    reg(make_release(), root)
    registry.promote("v1", root=root)
    registry.promote("v2", root=root)
    delete_weights(registry.get("v2", root=root))

    with pytest.raises(DamagedVersionError, match="version v2: weights file"):
        registry.current(root=root)
    [v2] = [v for v in registry.list_versions(root=root) if v.is_current]
    assert v2.version == "v2" and "missing" in v2.problem
    assert registry.rollback(root=root).version == "v1"


def test_rolling_back_onto_a_damaged_version_is_refused(make_release, root):
    reg(make_release(), root)
    reg(make_release(), root)
    registry.promote("v1", root=root)
    registry.promote("v2", root=root)
    flip_a_weight_byte(registry.get("v1", root=root))
    with pytest.raises(DamagedVersionError, match="version v1: checksum mismatch"):
        registry.rollback(root=root)
    assert registry.current(root=root).version == "v2"


def test_a_corrupt_pointer_does_not_break_listing_and_promoting_repairs_it(make_release, root):
    reg(make_release(), root)
    (root / "current.json").write_text("{not json")
    assert [(v.version, v.is_current) for v in registry.list_versions(root=root)] == [("v1", False)]
    with pytest.raises(RegistryError, match="current.json is unreadable"):
        registry.current(root=root)
    registry.promote("v1", root=root)
    assert registry.current(root=root).version == "v1" and registry.history(root=root) == ["v1"]


# --------------------------------------------------------------------------- the promotion gate

def scores(ppl: float, num_documents: int = 20, spread: float = 0.0, seed: int = 0) -> dict:
    """{document: NLLResult} whose token-weighted perplexity is ``ppl``; ``spread`` varies each document's
    log-perplexity around it (a noisy candidate), keeping the total at ``ppl`` exactly."""
    from helpers.evaluation import NLLResult

    noise = np.random.default_rng(seed).normal(0.0, spread, num_documents)
    noise -= noise.mean()
    return {f"doc{i:02d}": NLLResult(500 * (np.log(ppl) + noise[i]), 500) for i in range(num_documents)}


def metrics(new: float, old: float, **kwargs) -> dict:
    return {"new_data": scores(new, **kwargs), "old_data": scores(old, seed=1, **kwargs)}


CURRENT = metrics(100.0, 40.0)


def test_gate_promotes_a_clear_improvement_that_passes_the_smoke_test():
    calls = []
    decision = registry.gate(metrics(90.0, 40.4), CURRENT, margin=0.05, tolerance=0.02,
                             smoke_test=lambda: calls.append(1) or True)
    assert decision.promote and calls == [1]
    new, old, smoke = decision.rows
    assert (new.check, new.passed, old.check, old.passed, smoke.passed) == (
        "new-data improvement", True, "old-domain regression", True, True)
    assert new.candidate == pytest.approx(90.0) and new.current == pytest.approx(100.0)
    assert new.relative == pytest.approx(-0.10) and old.relative == pytest.approx(0.01)
    assert (new.interval, new.threshold, old.threshold) == ("[-10.0%, -10.0%]", "≤ -5.0%", "≤ +2.0%")
    assert "-10.0%" in new.explanation and "+1.0%" in old.explanation
    assert decision.table().endswith("PROMOTE: all 3 checks passed")


def test_gate_interval_is_the_paired_bootstrap_of_the_relative_change():
    from helpers.evaluation import paired_bootstrap

    candidate, current = metrics(85.0, 40.0, spread=0.3), metrics(100.0, 40.0, spread=0.3)
    row = registry.gate(candidate, current, smoke_test=lambda: True, seed=3, num_samples=500).rows[0]
    reference = paired_bootstrap(current["new_data"], candidate["new_data"], num_samples=500, seed=3).relative
    assert row.relative == pytest.approx(reference.point)
    assert row.interval == f"[{reference.low:+.1%}, {reference.high:+.1%}]"
    assert row.passed == (reference.high <= -0.05)


def test_gate_refuses_an_improvement_whose_interval_does_not_clear_the_margin():
    """The point estimate is 8 % better, past a 5 % margin, but the documents disagree too much to be sure."""
    current = {"new_data": scores(100.0, spread=0.0), "old_data": scores(40.0)}
    candidate = {"new_data": {n: type(r)(r.nll_sum + 500 * g, 500) for (n, r), g in zip(
        current["new_data"].items(), np.linspace(-0.6, 0.43, 20), strict=True)}, "old_data": scores(40.0)}
    decision = registry.gate(candidate, current, margin=0.05, smoke_test=lambda: True)
    new = decision.rows[0]
    assert new.relative < -0.05  # a point estimate alone would promote
    assert not new.passed and not decision.promote
    assert "KEEP the current version: failed new-data improvement" in decision.table()


def test_gate_refuses_a_regression_on_the_old_domain_beyond_the_tolerance():
    decision = registry.gate(metrics(80.0, 41.2), CURRENT, tolerance=0.02, smoke_test=lambda: True)
    assert not decision.promote
    assert [r.passed for r in decision.rows] == [True, False, True]
    assert "+3.0%" in decision.rows[1].explanation and "allowed at most 2.0% higher" in decision.rows[1].explanation


def test_gate_refuses_an_old_domain_interval_that_reaches_past_the_tolerance():
    """On average +1 % (inside a 2 % tolerance), but some documents regress by far more."""
    noisy = metrics(80.0, 40.0 * 1.01, spread=0.25)
    decision = registry.gate(noisy, metrics(100.0, 40.0, spread=0.0), tolerance=0.02, smoke_test=lambda: True)
    old = decision.rows[1]
    assert old.relative == pytest.approx(0.01, abs=1e-9) and not old.passed


@pytest.mark.parametrize("smoke_test, explanation", [
    (lambda: False, "failed"),
    (lambda: (False, "HTTP 500 from /v1/completions"), "failed: HTTP 500 from /v1/completions"),
    (lambda: 1 / 0, "raised ZeroDivisionError: division by zero"),
    (lambda: "ok", "returned 'ok'; expected True/False"),
    (None, "not run"),
])
def test_gate_refuses_a_failing_or_missing_smoke_test(smoke_test, explanation):
    decision = registry.gate(metrics(80.0, 39.0), CURRENT, smoke_test=smoke_test)
    assert not decision.promote
    assert [r.passed for r in decision.rows] == [True, True, False]
    assert decision.rows[2].explanation.startswith(explanation)
    assert "failed service smoke test" in decision.table()


def test_gate_passes_the_smoke_tests_message_through():
    decision = registry.gate(metrics(80.0, 39.0), CURRENT, smoke_test=lambda: (True, "200 OK, 12 tokens"))
    assert decision.promote and decision.rows[2].explanation == "passed: 200 OK, 12 tokens"


def test_gate_fails_a_diverged_candidate_instead_of_crashing():
    diverged = {key: {n: type(r)(float("inf"), r.num_tokens) for n, r in docs.items()} for key, docs in CURRENT.items()}
    decision = registry.gate(diverged, CURRENT, smoke_test=lambda: True)
    assert [r.passed for r in decision.rows] == [False, False, True]


def test_gate_uses_the_data_names_it_is_given():
    candidate = {"sonnets": scores(50.0), "plays": scores(30.0)}
    current = {"sonnets": scores(60.0), "plays": scores(30.0)}
    decision = registry.gate(candidate, current, new_data="sonnets", old_data="plays", smoke_test=lambda: True)
    assert decision.promote


def test_gate_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="candidate lacks 'old_data'"):
        registry.gate({"new_data": scores(80.0)}, CURRENT)
    with pytest.raises(TypeError, match="must map document names to NLLResult"):
        registry.gate({"new_data": {"a": 80.0}, "old_data": scores(40.0)}, CURRENT)
    with pytest.raises(ValueError, match="margin must be in"):
        registry.gate(CURRENT, CURRENT, margin=5)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        registry.gate(CURRENT, CURRENT, tolerance=-0.1)
    with pytest.raises(ValueError, match="same documents"):
        registry.gate(metrics(80.0, 40.0, num_documents=5), CURRENT)


def test_gate_decision_renders_for_notebooks():
    decision = registry.gate(metrics(90.0, 40.0), CURRENT, smoke_test=lambda: (False, "a|b"))
    markdown = decision.to_markdown()
    assert markdown.startswith("| check | candidate | current | relative | interval | threshold | passed | explanation |")
    assert "a\\|b" in markdown and "**KEEP the current version" in markdown
    html = decision._repr_html_()
    assert html.count("<tr>") == 4 and "<td>service smoke test</td>" in html
    assert str(decision) == decision.table()


def test_promote_if_passes_follows_the_decision(make_release, root):
    reg(make_release(), root)
    reg(make_release(), root)
    registry.promote("v1", root=root)
    refuse = registry.gate(metrics(99.0, 40.0), CURRENT, smoke_test=lambda: True)
    assert registry.promote_if_passes(refuse, "v2", root=root) is None
    assert registry.current(root=root).version == "v1"
    accept = registry.gate(metrics(80.0, 40.0), CURRENT, smoke_test=lambda: True)
    assert registry.promote_if_passes(accept, "v2", root=root).version == "v2"
    assert registry.current(root=root).version == "v2" and registry.history(root=root) == ["v1", "v2"]
