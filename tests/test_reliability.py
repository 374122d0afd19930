"""Nothing lost, nothing run, nothing hung: each finding of issue 17 tried as a careless or hostile user would.

* kill -9 at random moments, 24 trials each, during ``registry.register``, ``registry.promote``,
  ``training.save_checkpoint`` and ``data.prepare``: never a corrupt state, and no leftover
  after the next write;
* two processes racing ``promote`` (every successful call is in the history) and ``register``
  (distinct versions, collisions are ``VersionExistsError``);
* crafted files: a pickle that would run code, a FIFO, a link loop, a dangling link, a folder
  named ``*.txt``, a link out of the corpus, ``../`` and absolute paths in entries and manifests.

Processes are forked from the test process (Linux and macOS), so a trial costs milliseconds
rather than a fresh interpreter; the child loops the operation until it is killed. Sizes are
tiny on purpose (a few-KB weights file, a corpus of five short texts): the whole file runs in
well under a minute on two cores.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from helpers import atomic, data, registry, training
from helpers.registry import DamagedVersionError, VersionExistsError
from helpers.settings import make_settings

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked processes (POSIX only)")

TRIALS = 24  # the issue asks for at least 20 per operation
HASHES = {"original": "a" * 64}
METRICS = {"new_data_ppl": 50.0, "heldout_ppl": 40.0}


# --------------------------------------------------------------------------- processes


def fork(work) -> int:
    """Run ``work()`` in a forked child that never returns into pytest; its exit code says if it raised."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def kill_at_random(loop, rng: random.Random, longest: float) -> None:
    """Start ``loop`` (which never returns) in a child and kill -9 it after a random delay."""
    pid = fork(loop)
    time.sleep(rng.uniform(0.0, longest))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the child stopped by itself: its operation raised (see the captured stderr)"


def wait_ok(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "a child process failed (see the captured stderr)"


def hidden(folder: Path) -> list[str]:
    """Hidden entries of ``folder``: where interrupted writes leave their temporaries."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def report(name: str, **counts) -> None:
    print(f"\n{name}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))


# --------------------------------------------------------------------------- registry


@pytest.fixture
def release(tmp_path) -> Path:
    folder = tmp_path / "release"  # small: a few KB of weights is all the registry copies and hashes
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_file({"wte": rng.standard_normal((64, 16)).astype(np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return folder


def register(release: Path, root: Path, **kwargs) -> registry.Entry:
    return registry.register(release, data_manifest_hashes=HASHES, training_config={}, metrics=METRICS,
                             root=root, **kwargs)


def registry_leftovers(root: Path) -> list[str]:
    return hidden(root / "versions") + [n for n in hidden(root) if n.startswith(".current.json")]


def test_kill_9_during_register_never_corrupts_and_the_next_write_cleans(release, tmp_path):
    root = tmp_path / "registry"
    register(release, root)
    registry.promote("v1", root=root)
    rng = random.Random(17)
    left_behind = corrupt = leftovers_after = 0
    for _ in range(TRIALS):
        kill_at_random(lambda: [register(release, root) for _ in itertools.count()], rng, 0.15)
        left_behind += bool(registry_leftovers(root))
        rows = registry.list_versions(root=root)
        corrupt += any(r.problem for r in rows if not r.version.startswith("."))
        corrupt += registry.current(root=root).version != "v1"
        register(release, root)  # the next write
        leftovers_after += len(registry_leftovers(root))
    report("kill -9 during register", trials=TRIALS, kills_that_left_a_temporary=left_behind,
           corrupt_states=corrupt, leftovers_after_next_write=leftovers_after)
    assert corrupt == 0 and leftovers_after == 0


def test_kill_9_during_promote_never_corrupts_and_the_next_write_cleans(release, tmp_path):
    root = tmp_path / "registry"
    for _ in range(2):
        register(release, root)
    registry.promote("v1", root=root)  # a kill before the child's first promote then still finds a current version

    def promote_forever():
        for i in itertools.count():
            registry.promote(f"v{i % 2 + 1}", root=root)

    rng = random.Random(18)
    left_behind = corrupt = leftovers_after = 0
    for _ in range(TRIALS):
        kill_at_random(promote_forever, rng, 0.1)
        left_behind += bool(registry_leftovers(root))
        try:
            current, past = registry.current(root=root), registry.history(root=root)
            corrupt += current is None or past[-1] != current.version
        except registry.RegistryError:
            corrupt += 1
        registry.promote("v1" if registry.current(root=root).version == "v2" else "v2", root=root)  # the next write
        leftovers_after += len(registry_leftovers(root))
    report("kill -9 during promote", trials=TRIALS, kills_that_left_a_temporary=left_behind,
           corrupt_states=corrupt, leftovers_after_next_write=leftovers_after)
    assert corrupt == 0 and leftovers_after == 0


def test_two_processes_promoting_at_once_lose_no_history(release, tmp_path):
    """The finding: 399 successful promote() calls left 230 history entries (an unlocked read-modify-write)."""
    root = tmp_path / "registry"
    for name in ("a1", "a2", "b1", "b2"):
        register(release, root, version=name)
    calls = 40

    def promoter(prefix: str):
        def work():
            for i in range(calls):  # alternating its own two versions: every call changes the current one
                registry.promote(f"{prefix}{i % 2 + 1}", root=root)
        return work

    pids = [fork(promoter("a")), fork(promoter("b"))]
    for pid in pids:
        wait_ok(pid)
    assert len(registry.history(root=root)) == 2 * calls
    assert registry.history(root=root)[-1] == registry.current(root=root).version


def test_two_processes_registering_at_once_get_distinct_versions_or_version_exists(release, tmp_path):
    """The finding: callers got a raw OSError 'Directory not empty' instead of VersionExistsError."""
    root = tmp_path / "registry"
    outcomes = tmp_path / "outcomes"
    outcomes.mkdir()

    def registrar(name: str):
        def work():
            results = []
            for version in [None] * 6 + ["shared"]:
                try:
                    results.append(register(release, root, version=version).version)
                except VersionExistsError:
                    results.append("VersionExistsError")
            (outcomes / name).write_text(json.dumps(results))
        return work

    for pid in [fork(registrar("a")), fork(registrar("b"))]:
        wait_ok(pid)
    a, b = (json.loads((outcomes / name).read_text()) for name in ("a", "b"))
    auto = a[:-1] + b[:-1]
    assert sorted(auto, key=registry._natural_key) == [f"v{i}" for i in range(1, 13)]
    assert sorted([a[-1], b[-1]]) == ["VersionExistsError", "shared"]
    assert all(row.problem is None for row in registry.list_versions(root=root))


def test_every_name_collision_is_version_exists(release, tmp_path):
    root = tmp_path / "registry"
    register(release, root)
    (root / "versions" / "v2").write_text("not a version")  # something else holds the next name
    with pytest.raises(VersionExistsError, match="'v2'"):
        register(release, root)
    with pytest.raises(VersionExistsError, match="'v1'"):
        register(release, root, version="v1")
    assert registry_leftovers(root) == []


@pytest.mark.parametrize("how", ["relative", "absolute", "link"])
def test_an_entry_pointing_outside_its_folder_is_damaged(release, tmp_path, how):
    """The finding: weights_file '/etc/hostname' or '../../etc/hostname' with a matching checksum was accepted."""
    root = tmp_path / "registry"
    entry = register(release, root)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not the model")
    raw = json.loads((entry.path / "entry.json").read_text())
    raw["weights_sha256"] = atomic.sha256_file(outside)
    if how == "relative":
        raw["weights_file"] = os.path.relpath(outside, entry.model_dir)
    elif how == "absolute":
        raw["weights_file"] = str(outside)
    else:
        (entry.model_dir / "model.safetensors").unlink()
        (entry.model_dir / "model.safetensors").symlink_to(outside)
    (entry.path / "entry.json").write_text(json.dumps(raw))
    with pytest.raises(DamagedVersionError, match="not a path inside|leads outside"):
        registry.get("v1", root=root)
    [row] = registry.list_versions(root=root)
    assert "leads outside" in row.problem or "not a path inside" in row.problem


# --------------------------------------------------------------------------- checkpoints


def tiny_state(step: int) -> dict:
    """What train() saves, for a model of a few KB (the trials time the file system, not torch)."""
    weights = {"w": torch.full((32, 32), float(step)), "b": torch.zeros(32)}
    return {"model": weights, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": step},
            "step": step, "history": [{"step": step, "loss": 1.0}], "rng": {}}


def test_a_crafted_checkpoint_never_runs_code(tmp_path):
    """The finding: torch.load(weights_only=False) ran code from a state.pt whose checksum matched."""
    folder, marker = tmp_path / "checkpoints", tmp_path / "pwned"
    training.save_checkpoint(folder, 1, tiny_state(1), keep=3)

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling calls open(marker, "w"): a file appears

    crafted = training.save_checkpoint(folder, 2, {**tiny_state(2), "model": Payload()}, keep=3)
    assert json.loads((crafted / "meta.json").read_text())["sha256"] == atomic.sha256_file(crafted / "state.pt")
    with pytest.warns(UserWarning, match="step-000002"):
        state, path = training.load_latest_checkpoint(folder)
    assert not marker.exists()
    assert path.name == "step-000001" and state["step"] == 1


def test_a_save_killed_between_its_two_renames_loses_nothing(tmp_path):
    """The finding: re-saving a step and crashing between the renames of replace_folder made that step vanish."""
    folder = tmp_path / "checkpoints"
    training.save_checkpoint(folder, 5, tiny_state(5), keep=2)
    real_rename = Path.rename

    def die_before_the_new_folder_moves_in(self, target):
        if "-building-" in self.name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(self, target)

    def resave():
        Path.rename = die_before_the_new_folder_moves_in
        training.save_checkpoint(folder, 5, tiny_state(5), keep=2)

    pid = fork(resave)
    os.waitpid(pid, 0)
    assert not (folder / "step-000005").exists()  # the moment of the crash: moved aside, not yet replaced
    state, path = training.load_latest_checkpoint(folder)  # the next call puts it back
    assert path.name == "step-000005" and state["step"] == 5
    assert hidden(folder) == []


def test_kill_9_during_checkpoint_saves_never_loses_a_completed_one(tmp_path):
    folder, log = tmp_path / "checkpoints", tmp_path / "completed"
    training.save_checkpoint(folder, 1, tiny_state(1), keep=2)

    def save_forever(first: int):
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for i in itertools.count():
            step = first + i // 2  # every step saved twice: the second save replaces a complete checkpoint
            training.save_checkpoint(folder, step, tiny_state(step), keep=2)
            os.write(fd, f"{step}\n".encode())

    rng = random.Random(19)
    left_behind = corrupt = recovered = leftovers_after = 0
    for _ in range(TRIALS):
        log.unlink(missing_ok=True)
        first = training.checkpoint_step(training.list_checkpoints(folder)[-1]) + 1
        kill_at_random(lambda: save_forever(first), rng, 0.15)  # noqa: B023 (called before first changes)
        completed = [int(line) for line in log.read_text().split()] if log.exists() else []
        names = hidden(folder)
        left_behind += bool(names)
        recovered += any("-old-" in name for name in names) and not any(
            (folder / name.split("-old-")[0][1:]).exists() for name in names if "-old-" in name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a damaged checkpoint visible under its own name would warn
            try:
                state, _ = training.load_latest_checkpoint(folder)
                corrupt += state["step"] < max(completed, default=0)
            except UserWarning:
                corrupt += 1
        last = training.checkpoint_step(training.list_checkpoints(folder)[-1]) + 100
        training.save_checkpoint(folder, last, tiny_state(last), keep=2)  # the next write
        leftovers_after += len(hidden(folder))
    report("kill -9 during checkpoint saves", trials=TRIALS, kills_that_left_a_temporary=left_behind,
           interrupted_swaps_put_back=recovered, corrupt_states=corrupt, leftovers_after_next_write=leftovers_after)
    assert corrupt == 0 and leftovers_after == 0


def test_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    """The finding: nothing was fsynced, so a power cut after the rename could leave empty files."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the synced descriptors")
    events = []
    real_fsync, real_rename = os.fsync, Path.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(Path, "rename", lambda self, target: (events.append(("rename", str(self))),
                                                              real_rename(self, target))[1])
    training.save_checkpoint(tmp_path, 1, tiny_state(1), keep=2)
    swap = next(i for i, (kind, path) in enumerate(events) if kind == "rename" and "-building-" in path)
    synced = {Path(path).name for kind, path in events[:swap] if kind == "fsync"}
    assert {"state.pt", "meta.json"} <= synced  # the files
    assert any("-building-" in name for name in synced)  # and their folder, before it is renamed
    assert any(kind == "fsync" and path == str(tmp_path) for kind, path in events[swap:])  # then the parent


# --------------------------------------------------------------------------- corpus and cache

WORKS = {"hamlet": "HAMLET.\nWho's there?", "macbeth": "MACBETH.\nIs this a dagger which I see before me?",
         "lear": "LEAR.\nNothing will come of nothing: speak again.", "sonnets": "Shall I compare thee?",
         "tempest": "MIRANDA.\nO brave new world, that has such people in't!"}
SPLITS = dict(test=["hamlet"], validation=["macbeth"], held_back=["sonnets"])


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in WORKS.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


def load_bounded(folder: Path, **kwargs):
    """``load_corpus`` in a thread, given 10 s: a FIFO used to block it for ever."""
    result = {}

    def run():
        try:
            result["corpus"] = data.load_corpus(folder, **kwargs)
        except Exception as error:
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        for fifo in folder.glob("*.txt"):  # let the blocked open() finish so the thread ends
            if fifo.is_fifo():
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_corpus hung")
    if "error" in result:
        raise result["error"]
    return result["corpus"]


def test_a_fifo_in_the_corpus_is_refused_without_hanging(corpus):
    os.mkfifo(corpus / "pipe.txt")
    with pytest.raises(data.CorpusError, match=r"pipe\.txt is a FIFO.*not a regular file"):
        load_bounded(corpus)


def test_a_folder_named_txt_is_refused(corpus):
    (corpus / "notes.txt").mkdir()
    with pytest.raises(data.CorpusError, match=r"notes\.txt is a folder, not a regular file"):
        load_bounded(corpus)


def test_a_link_loop_is_refused_naming_it(corpus):
    (corpus / "a.txt").symlink_to(corpus / "b.txt")
    (corpus / "b.txt").symlink_to(corpus / "a.txt")
    with pytest.raises(data.CorpusError, match=r"a\.txt cannot be resolved.*link loop"):
        load_bounded(corpus)


def test_a_dangling_link_is_refused_naming_it(corpus, tmp_path):
    (corpus / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    with pytest.raises(data.CorpusError, match=r"gone\.txt is a broken link"):
        load_bounded(corpus)


def test_a_link_out_of_the_corpus_is_refused_unless_asked_for(corpus, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private notes, not part of the corpus")
    (corpus / "extra.txt").symlink_to(secret)
    with pytest.raises(data.CorpusError, match=r"extra\.txt is a link to .*secret\.txt, outside the corpus folder"):
        load_bounded(corpus)
    texts = {d.name: d.text for d in load_bounded(corpus, follow_links=True).documents}
    assert texts["extra"] == secret.read_text()


def test_a_link_inside_the_corpus_is_read(corpus):
    (corpus / "again.txt").symlink_to(corpus / "lear.txt")
    texts = {d.name: d.text for d in load_bounded(corpus).documents}
    assert texts["again"] == WORKS["lear"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_an_error_naming_it(corpus):
    (corpus / "lear.txt").chmod(0)
    with pytest.raises(data.CorpusError, match=r"cannot open .*lear\.txt.*chmod"):
        load_bounded(corpus)


@pytest.mark.parametrize("escape", ["../outside.npy", "absolute"])
def test_manifest_paths_must_stay_in_the_cache(corpus, tmp_path, tokenizer, escape):
    """The finding: a manifest whose file was '../x.npy' or absolute was loaded from outside the cache."""
    settings = make_settings("smoke", artifacts_dir=tmp_path / "artifacts")
    prepared = data.prepare(settings, source_dir=corpus, tokenizer=tokenizer, progress=False, verbose=False, **SPLITS)
    outside = tmp_path / "artifacts" / "outside.npy"
    np.save(outside, np.full(7, 13, dtype=np.uint16))
    manifest = json.loads((prepared.folder / "manifest.json").read_text())
    manifest["splits"]["train"]["file"] = "../outside.npy" if escape != "absolute" else str(outside)
    (prepared.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a file inside"):
        data.load_prepared(prepared.folder)
    again = data.prepare(settings, source_dir=corpus, tokenizer=tokenizer, progress=False, verbose=False, **SPLITS)
    assert not again.reused and again.paths["train"].parent == again.folder
    assert not np.array_equal(again.tokens("train"), np.load(outside))


def test_a_cache_file_linking_out_is_refused(corpus, tmp_path, tokenizer):
    settings = make_settings("smoke", artifacts_dir=tmp_path / "artifacts")
    prepared = data.prepare(settings, source_dir=corpus, tokenizer=tokenizer, progress=False, verbose=False, **SPLITS)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.load(prepared.paths["train"]))
    prepared.paths["train"].unlink()
    prepared.paths["train"].symlink_to(outside)
    with pytest.raises(ValueError, match="leads outside"):
        data.load_prepared(prepared.folder)


def test_kill_9_during_prepare_never_corrupts_and_the_next_call_cleans(corpus, tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # the tokenizer is used again in forked children
    # Hashing the whole tokenizer is 80 % of a prepare this small and touches no file: done once, so the
    # random kills land where files are written.
    fingerprint = data.tokenizer_fingerprint(tokenizer)
    monkeypatch.setattr(data, "tokenizer_fingerprint", lambda tokenizer: fingerprint)
    settings = make_settings("smoke", artifacts_dir=tmp_path / "artifacts")
    options = dict(source_dir=corpus, tokenizer=tokenizer, progress=False, verbose=False, **SPLITS)
    data.prepare(settings, **options)

    def prepare_forever():
        for _ in itertools.count():
            data.prepare(settings, force=True, **options)

    def complete(folder: Path) -> bool:
        prepared = data.load_prepared(folder)
        return all(len(prepared.tokens(split)) == stats["tokens"] for split, stats in prepared.stats["splits"].items())

    rng = random.Random(20)
    target = settings.artifacts_dir / "data"
    left_behind = missing = corrupt = leftovers_after = 0
    for _ in range(TRIALS):
        kill_at_random(prepare_forever, rng, 0.1)
        left_behind += bool(hidden(settings.artifacts_dir))
        if target.exists():
            try:
                corrupt += not complete(target)
            except (OSError, ValueError, KeyError):
                corrupt += 1
        else:
            missing += 1  # killed between the two renames: the next call must put it back
        again = data.prepare(settings, **options)  # the next call
        corrupt += not complete(again.folder)
        leftovers_after += len(hidden(settings.artifacts_dir))
    report("kill -9 during prepare", trials=TRIALS, kills_that_left_a_temporary=left_behind,
           interrupted_swaps_put_back=missing, corrupt_states=corrupt, leftovers_after_next_write=leftovers_after)
    assert corrupt == 0 and leftovers_after == 0


def test_a_child_killed_inside_a_progress_bar_leaves_the_bars_of_pytest_free():
    """tqdm's write lock, taken by every bar (even a disabled one), is not shared with a forked child."""
    from tqdm.std import tqdm

    ready = threading.Event()

    def hold_the_lock():
        with tqdm.get_lock():
            os.write(write_end, b"x")
            time.sleep(60)

    tqdm.get_lock()  # made here first, as an earlier bar in pytest would have
    read_end, write_end = os.pipe()
    pid = fork(hold_the_lock)
    os.read(read_end, 1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_end)
    os.close(write_end)
    bar_made = threading.Thread(target=lambda: (tqdm(range(3), disable=True).close(), ready.set()), daemon=True)
    bar_made.start()
    assert ready.wait(timeout=10), "a progress bar in pytest waits for a lock that a killed child held"


# --------------------------------------------------------------------------- the lock


def test_a_lock_held_by_a_stuck_process_times_out_with_advice_and_dies_with_it(tmp_path):
    folder, ready = tmp_path / "registry", tmp_path / "ready"

    def hold_for_ever():
        with atomic.locked(folder):
            ready.touch()
            time.sleep(60)

    pid = fork(hold_for_ever)
    while not ready.exists():
        time.sleep(0.01)
    with pytest.raises(TimeoutError, match="stuck: stop it"), atomic.locked(folder, timeout=0.3):
        pass
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with atomic.locked(folder, timeout=5), atomic.locked(folder):  # free again, and re-entrant
        pass

