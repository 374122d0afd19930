"""A small local model registry and the promotion gate that guards it.

Introduced in ``08_iteration.ipynb``: new data arrives, fine-tuning resumes, and the new
model is kept only when it is measurably better and still works. The registry lives in
``artifacts/registry/``::

    registry/
      current.json              {"version": "v2", "history": ["v1"], "updated": "..."}
      versions/
        v1/entry.json           version, parent, data hashes, training config, metrics, sha256
        v1/model/               a copy of the release folder (weights, tokenizer, card)
        v2/...

Every write is atomic: a version is built in a hidden temporary folder beside its final
place and renamed into place in one step (``os.replace``); ``current.json`` is written to a
temporary file and renamed the same way. A crash leaves either the old state or the new
one, never half of each; hidden leftovers (names starting with ``.``) are ignored.

A damaged version (unreadable ``entry.json``, missing weights, weights whose sha256 no
longer matches) is reported by :func:`list_versions` with the reason and refused by
:func:`get` and :func:`promote` with a clear error; it never stops the others being used.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from helpers.atomic import fsync_dir, sha256_file, write_text_atomic
from helpers.settings import get_settings

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # the first one present is hashed
ENTRY_FILE = "entry.json"
CURRENT_FILE = "current.json"
MODEL_DIR = "model"
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AUTO_VERSION = re.compile(r"v(\d+)")


class RegistryError(Exception):
    """Something about the registry's contents is wrong; the message says what and what to do."""


class UnknownVersionError(RegistryError):
    """The version asked for was never registered."""


class DamagedVersionError(RegistryError):
    """The version exists but its entry or weights are broken."""


class VersionExistsError(RegistryError):
    """A version with this name is already registered."""


@dataclass(frozen=True)
class Entry:
    """One registered version, as recorded in its ``entry.json``; ``model_dir`` loads with ``load_model``."""

    version: str
    parent: str | None
    created: str  # UTC, ISO 8601
    data_manifest_hashes: dict[str, str]
    training_config: dict[str, Any]
    metrics: dict[str, float]
    weights_file: str  # relative to model_dir
    weights_sha256: str
    path: Path  # registry/versions/<version>

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR


class VersionInfo(NamedTuple):
    """One row of :func:`list_versions`: ``problem`` is ``None`` for a healthy version."""

    version: str
    is_current: bool
    parent: str | None
    created: str | None
    problem: str | None


class MetricRow(NamedTuple):
    """One row of :func:`compare`: ``delta = b - a`` and ``relative = delta / a`` (None when undefined)."""

    metric: str
    a: float | None
    b: float | None
    delta: float | None
    relative: float | None


class GateRow(NamedTuple):
    """One check of :func:`gate` and why it passed or failed."""

    check: str
    candidate: float | None
    current: float | None
    threshold: float | None
    passed: bool
    explanation: str


# --------------------------------------------------------------------------- paths and atomic writes


def registry_root(root: Path | str | None = None) -> Path:
    """The registry folder: ``root`` when given (tests), else ``<artifacts>/registry``.

    Introduced in ``08_iteration.ipynb``.
    """
    return Path(root) if root is not None else get_settings().artifacts_dir / "registry"


def _versions_dir(root: Path | str | None) -> Path:
    return registry_root(root) / "versions"


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON beside ``path``, fsync it, then rename it over ``path``."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def _natural_key(name: str) -> list:
    """Sort ``v2`` before ``v10``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _check_version_name(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_NAME.fullmatch(version):
        raise ValueError(
            f"version {version!r} is not a valid name; use letters, digits, '.', '_' or '-' "
            "(at most 64, not starting with '.'), e.g. 'v3', or leave it None for the next vN"
        )
    return version


def _json_ready(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as a plain JSON round-trip (paths become strings); a clear error for anything else."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}")

    def default(obj: object) -> object:
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"{type(obj).__name__} {obj!r}")

    try:
        return json.loads(json.dumps(dict(value), default=default))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must hold only JSON values (numbers, strings, lists, dicts): {err}") from None


# --------------------------------------------------------------------------- reading entries


def _read_entry(folder: Path) -> Entry:
    """Read and check one version folder; raises ``DamagedVersionError`` saying what is wrong."""
    version = folder.name
    entry_path = folder / ENTRY_FILE
    try:
        raw = json.loads(entry_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} is unreadable ({err})") from None
    required = {
        "version": str, "parent": (str, type(None)), "created": str, "data_manifest_hashes": dict,
        "training_config": dict, "metrics": dict, "weights_file": str, "weights_sha256": str,
    }
    if not isinstance(raw, dict):
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} holds {type(raw).__name__}, not an object")
    for key, kind in required.items():
        if key not in raw:
            raise DamagedVersionError(f"version {version}: {ENTRY_FILE} lacks {key!r}")
        if not isinstance(raw[key], kind):
            raise DamagedVersionError(f"version {version}: {ENTRY_FILE} has a malformed {key!r}")
    if raw["version"] != version:
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} says it is version {raw['version']!r}")
    entry = Entry(**{key: raw[key] for key in required}, path=folder)
    weights = entry.model_dir / entry.weights_file
    if not weights.is_file():
        raise DamagedVersionError(f"version {version}: weights file {MODEL_DIR}/{entry.weights_file} is missing")
    actual = sha256_file(weights)
    if actual != entry.weights_sha256:
        raise DamagedVersionError(
            f"version {version}: checksum mismatch for {MODEL_DIR}/{entry.weights_file} "
            f"(recorded sha256 {entry.weights_sha256[:12]}…, file now {actual[:12]}…); the weights changed "
            "after registration: register the release again under a new version"
        )
    return entry


def _version_folders(root: Path | str | None) -> list[Path]:
    """Registered version folders, naturally sorted; hidden temporaries are not versions."""
    folder = _versions_dir(root)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda p: _natural_key(p.name))


def _read_pointer(root: Path | str | None) -> dict[str, Any]:
    """``current.json`` as ``{"version": str | None, "history": [...]}``; raises ``RegistryError`` if damaged."""
    path = registry_root(root) / CURRENT_FILE
    if not path.exists():
        return {"version": None, "history": []}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"{CURRENT_FILE} is unreadable ({err}); promote a version to rewrite it") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("version"), str)
        or not isinstance(raw.get("history"), list)
        or not all(isinstance(v, str) for v in raw["history"])
    ):
        raise RegistryError(f"{CURRENT_FILE} is malformed; promote a version to rewrite it")
    return raw


# --------------------------------------------------------------------------- public API


def get(version: str, *, root: Path | str | None = None) -> Entry:
    """The healthy entry of ``version`` (its weights checksum verified).

    Raises ``UnknownVersionError`` for a version never registered and ``DamagedVersionError``
    naming the version and the problem for a broken one. Introduced in ``08_iteration.ipynb``.
    """
    _check_version_name(version)
    folder = _versions_dir(root) / version
    if not folder.is_dir():
        known = ", ".join(p.name for p in _version_folders(root)) or "none yet"
        raise UnknownVersionError(f"version {version!r} is not registered (registered: {known})")
    return _read_entry(folder)


def list_versions(*, root: Path | str | None = None) -> list[VersionInfo]:
    """Every registered version, naturally sorted (v2 before v10), with which one is current.

    A damaged version is listed with its ``problem``; it never stops the others being listed.
    An unreadable ``current.json`` leaves every ``is_current`` False (``current()`` says why).
    Introduced in ``08_iteration.ipynb``.
    """
    try:
        current_version = _read_pointer(root)["version"]
    except RegistryError:
        current_version = None
    rows = []
    for folder in _version_folders(root):
        parent = created = problem = None
        try:
            entry = _read_entry(folder)
            parent, created = entry.parent, entry.created
        except DamagedVersionError as err:
            problem = str(err).removeprefix(f"version {folder.name}: ")
        rows.append(VersionInfo(folder.name, folder.name == current_version, parent, created, problem))
    return rows


def register(
    release_dir: Path | str,
    *,
    version: str | None = None,
    parent: str | None = None,
    data_manifest_hashes: Mapping[str, str],
    training_config: Mapping[str, Any],
    metrics: Mapping[str, float],
    root: Path | str | None = None,
) -> Entry:
    """Copy a release folder into the registry as a new version and record where it came from.

    ``version`` defaults to the next ``vN``; ``parent`` names the version it was trained from
    (it must be registered). The copy and its ``entry.json`` are built in a hidden folder and
    renamed into place in one step, so an interrupted call leaves the registry unchanged.
    Registering an existing version is a ``VersionExistsError``. Introduced in ``08_iteration.ipynb``.
    """
    release = Path(release_dir)
    if not release.is_dir():
        raise FileNotFoundError(f"release folder {release} does not exist; export one first (07_deployment)")
    weights_file = next((name for name in WEIGHTS_FILES if (release / name).is_file()), None)
    if weights_file is None:
        raise FileNotFoundError(
            f"release folder {release} has no weights file ({' or '.join(WEIGHTS_FILES)}); "
            "export it with save_pretrained first (07_deployment)"
        )
    hashes = _json_ready("data_manifest_hashes", data_manifest_hashes)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise ValueError("data_manifest_hashes must map names to hash strings, e.g. {'new_data': 'sha256…'}")
    config = _json_ready("training_config", training_config)
    scores = _json_ready("metrics", metrics)
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metrics[{name!r}] must be a number, got {value!r}")

    versions = _versions_dir(root)
    existing = [p.name for p in _version_folders(root)]
    if version is None:
        numbers = [int(m.group(1)) for name in existing if (m := _AUTO_VERSION.fullmatch(name))]
        version = f"v{max(numbers, default=0) + 1}"
    _check_version_name(version)
    if version in existing:
        raise VersionExistsError(
            f"version {version!r} is already registered; pick another name or leave version=None for the next vN"
        )
    if parent is not None and parent not in existing:
        raise UnknownVersionError(
            f"parent {parent!r} is not registered (registered: {', '.join(existing) or 'none yet'}); "
            "register the parent first or pass parent=None"
        )

    versions.mkdir(parents=True, exist_ok=True)
    tmp = versions / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(release, tmp / MODEL_DIR)
        for path in (tmp / MODEL_DIR).rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        record = {
            "version": version,
            "parent": parent,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data_manifest_hashes": hashes,
            "training_config": config,
            "metrics": scores,
            "weights_file": weights_file,
            "weights_sha256": sha256_file(tmp / MODEL_DIR / weights_file),
        }
        _write_json_atomic(tmp / ENTRY_FILE, record)
        if (versions / version).exists():  # appeared while we copied
            raise VersionExistsError(f"version {version!r} was registered by someone else meanwhile; try again")
        os.replace(tmp, versions / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(versions)
    return _read_entry(versions / version)


def current(*, root: Path | str | None = None) -> Entry | None:
    """The promoted version's entry, or ``None`` before anything was promoted.

    Raises ``DamagedVersionError`` when the current version is broken (roll back or promote
    another). Introduced in ``08_iteration.ipynb``.
    """
    version = _read_pointer(root)["version"]
    return None if version is None else get(version, root=root)


def history(*, root: Path | str | None = None) -> list[str]:
    """Earlier current versions, oldest first (what :func:`rollback` walks back through)."""
    return list(_read_pointer(root)["history"])


def _write_pointer(version: str, past: list[str], root: Path | str | None) -> None:
    folder = registry_root(root)
    folder.mkdir(parents=True, exist_ok=True)
    updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write_json_atomic(folder / CURRENT_FILE, {"version": version, "history": past, "updated": updated})


def promote(version: str, *, root: Path | str | None = None) -> Entry:
    """Make ``version`` current; the previous current goes onto the history for :func:`rollback`.

    Only a healthy registered version can be promoted (a clear error otherwise). Promoting
    the current version again changes nothing. An unreadable ``current.json`` is rewritten
    with a fresh history. Introduced in ``08_iteration.ipynb``.
    """
    entry = get(version, root=root)
    try:
        pointer = _read_pointer(root)
    except RegistryError:
        pointer = {"version": None, "history": []}
    if pointer["version"] == version:
        return entry
    past = pointer["history"] + ([pointer["version"]] if pointer["version"] else [])
    _write_pointer(version, past, root)
    return entry


def rollback(*, root: Path | str | None = None) -> Entry:
    """Make the previous current version current again and return its entry.

    Raises ``RegistryError`` when nothing was promoted before the current one, and
    ``DamagedVersionError`` when that earlier version is broken (promote a healthy one
    explicitly then). Introduced in ``08_iteration.ipynb``.
    """
    pointer = _read_pointer(root)
    if pointer["version"] is None:
        raise RegistryError("nothing to roll back: no version has been promoted yet")
    if not pointer["history"]:
        raise RegistryError(f"nothing to roll back to: {pointer['version']} is the first version promoted")
    previous = pointer["history"][-1]
    entry = get(previous, root=root)
    _write_pointer(previous, pointer["history"][:-1], root)
    return entry


def compare(a: str, b: str, *, root: Path | str | None = None) -> list[MetricRow]:
    """Metric by metric, version ``b`` against version ``a`` (the union of both versions' metrics).

    A metric one version lacks shows ``None``; so do ``delta`` and ``relative`` then.
    ``format_table(compare("v1", "v2"))`` prints it. Introduced in ``08_iteration.ipynb``.
    """
    ma, mb = get(a, root=root).metrics, get(b, root=root).metrics
    rows = []
    for name in list(ma) + [k for k in mb if k not in ma]:
        va, vb = ma.get(name), mb.get(name)
        delta = vb - va if va is not None and vb is not None else None
        relative = delta / va if delta is not None and va != 0 else None
        rows.append(MetricRow(name, va, vb, delta, relative))
    return rows


# --------------------------------------------------------------------------- tables


def _cell(column: str, value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column == "relative":
            return f"{value:+.1%}"
        return f"{value:+.4g}" if column == "delta" else f"{value:.4g}"
    return str(value)


def _cells(rows: Sequence[NamedTuple]) -> tuple[list[str], list[list[str]]]:
    if not rows:
        return [], []
    headers = list(rows[0]._fields)
    return headers, [[_cell(h, v) for h, v in zip(headers, row, strict=True)] for row in rows]


def format_table(rows: Sequence[NamedTuple]) -> str:
    """A plain-text table of :func:`list_versions`, :func:`compare` or gate rows (``relative`` as %).

    Introduced in ``08_iteration.ipynb``.
    """
    headers, body = _cells(rows)
    if not headers:
        return "(no rows)"
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]
    lines = [headers, ["-" * w for w in widths], *body]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


# --------------------------------------------------------------------------- the promotion gate


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: ``promote`` is True only when every row passed."""

    promote: bool
    rows: list[GateRow]

    @property
    def verdict(self) -> str:
        if self.promote:
            return f"PROMOTE: all {len(self.rows)} checks passed"
        failed = ", ".join(row.check for row in self.rows if not row.passed)
        return f"KEEP the current version: failed {failed}"

    def table(self) -> str:
        return f"{format_table(self.rows)}\n{self.verdict}"

    def to_markdown(self) -> str:
        headers, body = _cells(self.rows)
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
        return "\n".join(lines) + f"\n\n**{self.verdict}**"

    def _repr_html_(self) -> str:
        headers, body = _cells(self.rows)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in body)
        return f"<table><tr>{head}</tr>{trs}</table><p><b>{html.escape(self.verdict)}</b></p>"

    def __str__(self) -> str:
        return self.table()


def _metric(metrics: Mapping[str, float], key: str, which: str) -> float:
    if key not in metrics:
        raise ValueError(
            f"{which} lacks {key!r} (has {', '.join(map(repr, metrics)) or 'nothing'}); "
            "measure it, or name the metric with new_data_metric= / heldout_metric="
        )
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{which}[{key!r}] must be a number, got {value!r}")
    return float(value)


def _run_smoke_test(smoke_test: Callable[[], bool | tuple[bool, str]] | None) -> GateRow:
    name = "service smoke test"
    if smoke_test is None:
        return GateRow(name, None, None, None, False, "not run: pass smoke_test= (a real request to the service)")
    try:
        result = smoke_test()
    except Exception as err:  # a failing service is a failed check, not a crash of the gate
        return GateRow(name, None, None, None, False, f"raised {type(err).__name__}: {err}")
    message = ""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        result, message = result
    if not isinstance(result, bool):
        return GateRow(name, None, None, None, False, f"returned {result!r}; expected True/False or (bool, message)")
    explanation = ("passed" if result else "failed") + (f": {message}" if message else "")
    return GateRow(name, None, None, None, result, explanation)


def gate(
    candidate_metrics: Mapping[str, float],
    current_metrics: Mapping[str, float],
    *,
    margin: float = 0.05,
    tolerance: float = 0.02,
    smoke_test: Callable[[], bool | tuple[bool, str]] | None = None,
    new_data_metric: str = "new_data_ppl",
    heldout_metric: str = "heldout_ppl",
) -> GateDecision:
    """Decide whether a candidate model replaces the current one; every reason in one table.

    Promote only if (1) perplexity on the new data is at least ``margin`` lower, relative
    (0.05: 5 % lower), (2) perplexity on the original held-out set is at most ``tolerance``
    higher, relative, and (3) ``smoke_test()`` passes: it returns ``True``/``False`` or
    ``(passed, message)``; raising counts as failing, and no smoke test at all fails too.
    Both metric dicts must be measured on the same data (evaluate the current model on the
    new data too). Introduced in ``08_iteration.ipynb``.
    """
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1) (0.05 = 5 % lower perplexity), got {margin}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 (0.02 = at most 2 % higher perplexity), got {tolerance}")
    rows = []
    for check, key, limit, direction in (
        ("new-data improvement", new_data_metric, 1 - margin, "lower"),
        ("held-out regression", heldout_metric, 1 + tolerance, "higher"),
    ):
        cand = _metric(candidate_metrics, key, "candidate_metrics")
        cur = _metric(current_metrics, key, "current_metrics")
        if not (math.isfinite(cur) and cur > 0):
            raise ValueError(f"current_metrics[{key!r}] = {cur} is not a perplexity (a positive finite number)")
        if cand <= 0:  # inf or nan (a diverged run) fails the check below instead
            raise ValueError(f"candidate_metrics[{key!r}] = {cand} is not a perplexity (must be positive)")
        threshold = cur * limit
        passed = cand <= threshold  # False for inf and nan too
        change = (cand - cur) / cur
        if direction == "lower":
            rule = f"needs at least {margin:.1%} lower"
        else:
            rule = f"allowed at most {tolerance:.1%} higher"
        explanation = f"{key} {cand:.4g} vs {cur:.4g}: {change:+.1%}; {rule} (≤ {threshold:.4g})"
        rows.append(GateRow(check, cand, cur, threshold, passed, explanation))
    rows.append(_run_smoke_test(smoke_test))
    return GateDecision(promote=all(row.passed for row in rows), rows=rows)


def promote_if_passes(decision: GateDecision, version: str, *, root: Path | str | None = None) -> Entry | None:
    """Promote ``version`` when ``decision.promote``; return its entry, or ``None`` when the gate said no.

    Introduced in ``08_iteration.ipynb``.
    """
    return promote(version, root=root) if decision.promote else None

