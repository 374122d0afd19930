"""A small local model registry and the promotion gate that guards it.

Introduced in ``11_iteration.ipynb``: new data arrives, fine-tuning resumes, and the new
model is kept only when it is measurably better and still works. The registry lives in
``artifacts/registry/``::

    registry/
      current.json              {"version": "v3", "previous": ["v1"], "history": ["v1", "v3"], "updated": "..."}
      versions/
        v1/entry.json           version, parent, data hashes, training config, metrics, sha256
        v1/model/               a copy of the release folder (weights, tokenizer, card)
        v2/...

``previous`` is what :func:`rollback` walks back through; ``history`` records every version
that was made current, in order, and is never shortened.

A version is ``full`` (a release folder: the whole model) or an ``adapter`` version
(:func:`register_adapter`): its ``model/`` holds only a LoRA adapter and the tokenizer, and its
entry names the base (a full registry version, or a folder inside the repository) with the
base weights' sha256. Every read of an adapter version checks that checksum, so an adapter is
never silently applied to other weights; :func:`load` merges it into its base.

Every write is atomic and locked. A version is built in a hidden temporary folder beside its
final place and renamed into place in one step; ``current.json`` is written to a temporary
file and renamed the same way (``helpers.atomic``). A crash leaves either the old state or
the new one, never half of each. Every read-modify-write (register, promote, rollback, clean)
holds an exclusive lock on the registry folder, so two processes never lose each other's
changes. What a killed writer leaves behind is listed by :func:`list_versions` and removed by
:func:`clean`, which every successful write also runs.

A damaged version (unreadable ``entry.json``, missing weights, weights whose sha256 no
longer matches, a weights file outside its version folder) is reported by
:func:`list_versions` with the reason and refused by :func:`get` and :func:`promote` with a
clear error; it never stops the others being used.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from helpers import cards
from helpers.atomic import build_folder, locked, remove_path, sha256_file, write_text_atomic, writer_state
from helpers.models import ADAPTER_FILE, check_adapter_folder, load_pretrained
from helpers.settings import REPO_ROOT, get_settings

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # the first one present is hashed
ENTRY_FILE = "entry.json"
CURRENT_FILE = "current.json"
MODEL_DIR = "model"
FULL, ADAPTER = "full", "adapter"  # the two kinds of version
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
    kind: str = FULL  # or ADAPTER: model_dir holds a LoRA adapter for ``base``
    base: dict[str, str] | None = None  # an adapter's base: {"version": "v1"} or {"folder": "data/models/..."}
    base_sha256: str | None = None  # the base weights' sha256 when the adapter was registered

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def base_dir(self) -> Path | None:
        """The folder of an adapter version's base model (``None`` for a full version)."""
        if self.base is None:
            return None
        if "version" in self.base:
            return self.path.parent / self.base["version"] / MODEL_DIR
        return REPO_ROOT / self.base["folder"]

    @property
    def description(self) -> str:
        """``full``, or ``adapter of v1`` (of the base's version or folder)."""
        return FULL if self.base is None else f"adapter of {next(iter(self.base.values()))}"


class VersionInfo(NamedTuple):
    """One row of :func:`list_versions`: ``problem`` is ``None`` for a healthy version; ``size`` in bytes."""

    version: str
    is_current: bool
    kind: str | None  # "full" or "adapter of v1"
    parent: str | None
    size: int | None  # the version folder on disk, entry included
    created: str | None
    problem: str | None


class MetricRow(NamedTuple):
    """One row of :func:`compare`: ``delta = b - a`` and ``relative = delta / a`` (None when undefined)."""

    metric: str
    a: float | None
    b: float | None
    delta: float | None
    relative: float | None


class Comparison(list):
    """What :func:`compare` returns: its :class:`MetricRow` rows, and the two versions' names as
    ``labels`` (``{"a": "v1", "b": "v3"}``), which :func:`format_table` uses as column titles."""

    def __init__(self, rows: Sequence[MetricRow], a: str, b: str):
        super().__init__(rows)
        self.labels = {"a": a, "b": b}


class GateRow(NamedTuple):
    """One check of :func:`gate` and why it passed or failed.

    ``candidate`` and ``current`` are perplexities, ``relative`` is the candidate's relative change
    (negative: lower, better), ``interval`` its paired-bootstrap interval and ``threshold`` the
    bound the interval's upper end must stay at or below.
    """

    check: str
    candidate: float | None
    current: float | None
    relative: float | None
    interval: str | None
    threshold: str | None
    passed: bool
    explanation: str


# --------------------------------------------------------------------------- paths and atomic writes


def registry_root(root: Path | str | None = None) -> Path:
    """The registry folder: ``root`` when given (tests), else ``<artifacts>/registry``.

    Introduced in ``11_iteration.ipynb``.
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

_ENTRY_FIELDS = {
    "version": str, "parent": (str, type(None)), "created": str, "data_manifest_hashes": dict,
    "training_config": dict, "metrics": dict, "weights_file": str, "weights_sha256": str,
}
_ADAPTER_FIELDS = {"base": dict, "base_sha256": str}  # required when "kind" is "adapter"; older entries are full


def _read_entry(folder: Path) -> Entry:
    """Read and check one version folder; raises ``DamagedVersionError`` saying what is wrong."""
    version = folder.name
    if folder.is_symlink():
        raise DamagedVersionError(f"version {version}: its folder is a link to {os.readlink(folder)}; "
                                  "a version must be a real folder inside the registry: register it again")
    entry_path = folder / ENTRY_FILE
    try:
        raw = json.loads(entry_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} is unreadable ({err})") from None
    if not isinstance(raw, dict):
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} holds {type(raw).__name__}, not an object")
    for key, kind in _ENTRY_FIELDS.items():
        if key not in raw:
            raise DamagedVersionError(f"version {version}: {ENTRY_FILE} lacks {key!r}")
        if not isinstance(raw[key], kind):
            raise DamagedVersionError(f"version {version}: {ENTRY_FILE} has a malformed {key!r}")
    if raw["version"] != version:
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} says it is version {raw['version']!r}")
    kind = raw.get("kind", FULL)
    if kind == ADAPTER:
        for key, type_ in _ADAPTER_FIELDS.items():
            if not isinstance(raw.get(key), type_):
                raise DamagedVersionError(f"version {version}: an adapter's {ENTRY_FILE} lacks a valid {key!r}")
        if len(raw["base"]) != 1 or not isinstance(raw["base"].get("version", raw["base"].get("folder")), str):
            raise DamagedVersionError(f"version {version}: {ENTRY_FILE} has a malformed 'base' (one of "
                                      "{'version': ...} or {'folder': ...})")
    elif kind != FULL:
        raise DamagedVersionError(f"version {version}: {ENTRY_FILE} has kind {kind!r}; expected {FULL!r} or {ADAPTER!r}")
    extra = {key: raw[key] for key in _ADAPTER_FIELDS} if kind == ADAPTER else {}
    entry = Entry(**{key: raw[key] for key in _ENTRY_FIELDS}, path=folder, kind=kind, **extra)
    _check_weights(entry)
    if kind == ADAPTER:
        _check_base(entry)
    return entry


def _base_weights(base: Mapping[str, str], versions: Path, who: str) -> Path:
    """The weights file of an adapter's ``base`` (a version in ``versions`` or a repository folder).

    ``who`` starts the ``DamagedVersionError`` raised when the base is gone, damaged or not a full model.
    """
    name = base.get("version")
    if name is not None:
        try:
            entry = _read_entry(versions / _check_version_name(name))
        except (DamagedVersionError, ValueError) as err:
            raise DamagedVersionError(f"{who}: its base {name} is missing or damaged ({err})") from None
        if entry.kind != FULL:
            raise DamagedVersionError(f"{who}: its base {name} is an adapter version, not a full model")
        return entry.model_dir / entry.weights_file
    folder = (REPO_ROOT / base["folder"]).resolve()
    if not folder.is_relative_to(REPO_ROOT):
        raise DamagedVersionError(f"{who}: its base folder {base['folder']!r} is outside the repository")
    weights_file = next((n for n in WEIGHTS_FILES if (folder / n).is_file()), None)
    if weights_file is None:
        raise DamagedVersionError(f"{who}: its base folder {base['folder']} has no weights ({' or '.join(WEIGHTS_FILES)})")
    return folder / weights_file


def _check_base(entry: Entry) -> None:
    """An adapter's base weights are the ones it was registered for (same sha256)."""
    actual = sha256_file(_base_weights(entry.base, entry.path.parent, f"version {entry.version}"))
    if actual != entry.base_sha256:
        raise DamagedVersionError(
            f"version {entry.version}: base checksum mismatch: the adapter was registered for base weights with "
            f"sha256 {entry.base_sha256}, but {entry.description.removeprefix('adapter of ')} now has sha256 "
            f"{actual}; applying it would give a different model. Register the adapter again on the base it was "
            "trained on"
        )


def _check_weights(entry: Entry) -> None:
    """The weights file lies inside the version folder, is a regular file, and matches its checksum."""
    version, name = entry.version, entry.weights_file
    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise DamagedVersionError(
            f"version {version}: {ENTRY_FILE} names weights_file {name!r}, which is not a path inside "
            f"{MODEL_DIR}/; an entry may only point at its own files: register the release again"
        )
    weights = entry.model_dir / relative
    if not weights.resolve().is_relative_to(entry.path.resolve()):
        raise DamagedVersionError(
            f"version {version}: weights file {MODEL_DIR}/{name} leads outside the version folder "
            f"(to {weights.resolve()}); register the release again"
        )
    try:
        mode = weights.stat().st_mode
    except OSError:
        raise DamagedVersionError(f"version {version}: weights file {MODEL_DIR}/{name} is missing") from None
    if not stat.S_ISREG(mode):
        raise DamagedVersionError(f"version {version}: weights file {MODEL_DIR}/{name} is not a regular file")
    actual = sha256_file(weights)
    if actual != entry.weights_sha256:
        raise DamagedVersionError(
            f"version {version}: checksum mismatch for {MODEL_DIR}/{name} "
            f"(recorded sha256 {entry.weights_sha256[:12]}…, file now {actual[:12]}…); the weights changed "
            "after registration: register the release again under a new version"
        )


def _version_folders(root: Path | str | None) -> list[Path]:
    """Registered version folders, naturally sorted; hidden temporaries are not versions."""
    folder = _versions_dir(root)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda p: _natural_key(p.name))


def _leftovers(root: Path | str | None) -> list[Path]:
    """What interrupted writes can leave: hidden entries in ``versions/`` and temporary ``current.json`` files."""
    found = []
    versions = _versions_dir(root)
    if versions.is_dir():
        found += [p for p in versions.iterdir() if p.name.startswith(".")]
    folder = registry_root(root)
    if folder.is_dir():
        found += [p for p in folder.iterdir() if p.name.startswith(f".{CURRENT_FILE}")]
    return sorted(found)


def _read_pointer(root: Path | str | None) -> dict[str, Any]:
    """``current.json`` as ``{"version", "previous", "history"}``; raises ``RegistryError`` if damaged."""
    path = registry_root(root) / CURRENT_FILE
    if not path.exists():
        return {"version": None, "previous": [], "history": []}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"{CURRENT_FILE} is unreadable ({err}); promote a version to rewrite it") from None
    if isinstance(raw, dict) and "previous" not in raw and isinstance(raw.get("history"), list):
        raw = {**raw, "previous": raw["history"], "history": [*raw["history"], raw.get("version")]}  # older layout
    lists = ("previous", "history")
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("version"), str)
        or not all(isinstance(raw.get(key), list) and all(isinstance(v, str) for v in raw[key]) for key in lists)
    ):
        raise RegistryError(f"{CURRENT_FILE} is malformed; promote a version to rewrite it")
    return raw


# --------------------------------------------------------------------------- public API


def get(version: str, *, root: Path | str | None = None) -> Entry:
    """The healthy entry of ``version`` (its weights checksum verified).

    Raises ``UnknownVersionError`` for a version never registered and ``DamagedVersionError``
    naming the version and the problem for a broken one. Introduced in ``11_iteration.ipynb``.
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
    What an interrupted write left behind is listed last, under its hidden name, with a problem
    that says whether a running process is still writing it or :func:`clean` will remove it.
    An unreadable ``current.json`` leaves every ``is_current`` False (``current()`` says why).
    Introduced in ``11_iteration.ipynb``.
    """
    try:
        current_version = _read_pointer(root)["version"]
    except RegistryError:
        current_version = None
    rows = []
    for folder in _version_folders(root):
        kind = parent = created = problem = None
        try:
            entry = _read_entry(folder)
            kind, parent, created = entry.description, entry.parent, entry.created
        except DamagedVersionError as err:
            problem = str(err).removeprefix(f"version {folder.name}: ")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        rows.append(VersionInfo(folder.name, folder.name == current_version, kind, parent, size, created, problem))
    for path in _leftovers(root):
        if writer_state(path) == "running":
            problem = "being written by a running process"
        else:
            problem = "left by an interrupted write; registry.clean() removes it (so does the next write)"
        rows.append(VersionInfo(path.name, False, None, None, None, None, problem))
    return rows


def clean(*, root: Path | str | None = None) -> list[str]:
    """Remove what interrupted writes left in the registry; return the names removed.

    A temporary whose writer is still running is kept; one whose writer is gone (killed,
    crashed) is removed, as is one without a writer's name that is over a minute old. Every
    successful :func:`register`, :func:`promote` and :func:`rollback` runs it too.
    Introduced in ``11_iteration.ipynb``.
    """
    with locked(registry_root(root)):
        return _clean_locked(root)


def _clean_locked(root: Path | str | None) -> list[str]:
    removed = []
    for path in _leftovers(root):
        if writer_state(path) == "orphaned":
            remove_path(path)
            removed.append(path.name)
    return removed


def _release_weights(release: Path, weights_files: Sequence[str] = WEIGHTS_FILES) -> str:
    """The release's weights file name; a clear error for a folder that is not a release."""
    if not release.is_dir():
        raise FileNotFoundError(f"release folder {release} does not exist; export one first (10_deployment)")
    weights_file = next((name for name in weights_files if (release / name).is_file()), None)
    if weights_file is None:
        raise FileNotFoundError(
            f"release folder {release} has no weights file ({' or '.join(weights_files)}); "
            "export it with save_pretrained first (10_deployment)"
        )
    for path in release.rglob("*"):
        if not (path.is_dir() or path.is_file()):
            raise ValueError(f"{path} in the release folder is not a regular file (a FIFO, socket or broken link); "
                             "remove it and register again")
    return weights_file


def _checked_metadata(hashes: Mapping[str, str], config: Mapping[str, Any], metrics: Mapping[str, float]) -> dict:
    hashes = _json_ready("data_manifest_hashes", hashes)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise ValueError("data_manifest_hashes must map names to hash strings, e.g. {'new_data': 'sha256…'}")
    scores = _json_ready("metrics", metrics)
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metrics[{name!r}] must be a number, got {value!r}")
    return {"data_manifest_hashes": hashes, "training_config": _json_ready("training_config", config), "metrics": scores}


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
    renamed into place in one step, under the registry's lock, so an interrupted call leaves
    the registry unchanged and two processes registering at once get different versions.
    A name that is taken (by a version, or by anything else in ``versions/``) is a
    ``VersionExistsError``. Introduced in ``11_iteration.ipynb``.
    """
    release = Path(release_dir)
    weights_file = _release_weights(release)
    metadata = _checked_metadata(data_manifest_hashes, training_config, metrics)
    return _register(release, weights_file, lambda existing: {}, version, parent, metadata, root)


def register_adapter(
    adapter_dir: Path | str,
    *,
    base: str | Path,
    version: str | None = None,
    parent: str | None = None,
    data_manifest_hashes: Mapping[str, str],
    training_config: Mapping[str, Any],
    metrics: Mapping[str, float],
    root: Path | str | None = None,
) -> Entry:
    """Register a LoRA adapter folder (``save_pretrained``'s files and the tokenizer) as an adapter version.

    ``base`` is what it was trained on: a registered full version (``"v1"``, a ``str``) or a
    model folder inside the repository (a ``Path``, e.g. ``data/models/tiny-gpt2-base``). The
    entry records that reference and the base weights' sha256; only the adapter's files are
    copied (kilobytes, not the base's megabytes). Atomic and locked like :func:`register`.
    Introduced in ``11_iteration.ipynb``.
    """
    adapter = check_adapter_folder(adapter_dir)
    _release_weights(adapter, weights_files=(ADAPTER_FILE,))
    metadata = _checked_metadata(data_manifest_hashes, training_config, metrics)
    if isinstance(base, Path):
        base_folder = base.resolve()
        if not base_folder.is_relative_to(REPO_ROOT):
            raise ValueError(f"base folder {base} is outside the repository; an entry may only name folders inside "
                             "it (no machine paths): register the base as a version and pass its name")
        reference = {"folder": base_folder.relative_to(REPO_ROOT).as_posix()}
    elif isinstance(base, str):
        reference = {"version": _check_version_name(base)}
    else:
        raise TypeError(f"base must be a version name (str) or a folder (Path), got {type(base).__name__}")

    def base_fields(existing: list[str]) -> dict[str, Any]:
        if "version" in reference and reference["version"] not in existing:
            raise UnknownVersionError(f"base {reference['version']!r} is not registered (registered: "
                                      f"{', '.join(existing) or 'none yet'}); register the base first")
        weights = _base_weights(reference, _versions_dir(root), f"adapter {adapter}")
        return {"kind": ADAPTER, "base": reference, "base_sha256": sha256_file(weights)}

    return _register(adapter, ADAPTER_FILE, base_fields, version, parent, metadata, root)


def _register(source: Path, weights_file: str, extra_fields: Callable[[list[str]], dict[str, Any]],
              version: str | None, parent: str | None, metadata: dict, root: Path | str | None) -> Entry:
    """Copy ``source`` into a new version folder with its entry, atomically and under the lock."""
    with locked(registry_root(root)):
        existing = [p.name for p in _version_folders(root)]
        if version is None:
            numbers = [int(m.group(1)) for name in existing if (m := _AUTO_VERSION.fullmatch(name))]
            version = f"v{max(numbers, default=0) + 1}"
        _check_version_name(version)
        taken = VersionExistsError(
            f"version {version!r} is already registered; pick another name or leave version=None for the next vN"
        )
        if version in existing:
            raise taken
        if parent is not None and parent not in existing:
            raise UnknownVersionError(
                f"parent {parent!r} is not registered (registered: {', '.join(existing) or 'none yet'}); "
                "register the parent first or pass parent=None"
            )
        extra = extra_fields(existing)
        try:
            with build_folder(_versions_dir(root) / version, overwrite=False) as building:
                shutil.copytree(source, building / MODEL_DIR)
                record = {
                    "version": version,
                    "parent": parent,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **metadata,
                    "weights_file": weights_file,
                    "weights_sha256": sha256_file(building / MODEL_DIR / weights_file),
                    **extra,
                }
                _write_json_atomic(building / ENTRY_FILE, record)
        except FileExistsError:
            raise taken from None
        _clean_locked(root)
    return _read_entry(_versions_dir(root) / version)


def load(version: str, *, root: Path | str | None = None, device: str | None = None):
    """``(model, tokenizer)`` of a version, ready to evaluate or serve; both checksums verified first.

    A full version loads as it was released. An adapter version is loaded onto its base and
    merged (``merge_and_unload``): the result is a plain ``GPT2LMHeadModel`` that computes
    base + adapter at the base's speed, which the evaluation and the service take as they
    take any other model. (A ``PeftModel`` would keep the adapter separate, to switch adapters
    on one base; one model per version needs no switching.) Introduced in ``11_iteration.ipynb``.
    """
    entry = get(version, root=root)
    adapter = entry.model_dir if entry.kind == ADAPTER else None
    return load_pretrained(entry.base_dir or entry.model_dir, adapter=adapter, device=device)


def current(*, root: Path | str | None = None) -> Entry | None:
    """The promoted version's entry, or ``None`` before anything was promoted.

    Raises ``DamagedVersionError`` when the current version is broken (roll back or promote
    another). Introduced in ``11_iteration.ipynb``.
    """
    version = _read_pointer(root)["version"]
    return None if version is None else get(version, root=root)


def history(*, root: Path | str | None = None) -> list[str]:
    """Every version that was made current, oldest first, one per promotion or rollback.

    The last one is the current version. Rollbacks add to it and never shorten it.
    Introduced in ``11_iteration.ipynb``.
    """
    return list(_read_pointer(root)["history"])


def _write_pointer(version: str, previous: list[str], past: list[str], root: Path | str | None) -> None:
    updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    pointer = {"version": version, "previous": previous, "history": [*past, version], "updated": updated}
    _write_json_atomic(registry_root(root) / CURRENT_FILE, pointer)


def promote(version: str, *, root: Path | str | None = None) -> Entry:
    """Make ``version`` current; the previous current is kept for :func:`rollback`.

    Only a healthy registered version can be promoted (a clear error otherwise). Promoting
    the current version again changes nothing. An unreadable ``current.json`` is rewritten
    with a fresh history. Holds the registry's lock from reading ``current.json`` to
    rewriting it, so concurrent promotions are all recorded. Introduced in ``11_iteration.ipynb``.
    """
    with locked(registry_root(root)):
        entry = get(version, root=root)
        try:
            pointer = _read_pointer(root)
        except RegistryError:
            pointer = {"version": None, "previous": [], "history": []}
        if pointer["version"] == version:
            return entry
        previous = pointer["previous"] + ([pointer["version"]] if pointer["version"] else [])
        _write_pointer(version, previous, pointer["history"], root)
        _clean_locked(root)
    return entry


def rollback(*, root: Path | str | None = None) -> Entry:
    """Make the version that was current before the last promotion current again; return its entry.

    Rolling back twice walks back two promotions; promoting again afterwards and rolling back
    works as before. :func:`history` keeps every step. Raises ``RegistryError`` when nothing
    was promoted before the current one, and ``DamagedVersionError`` when that earlier
    version is broken (promote a healthy one explicitly then). Introduced in ``11_iteration.ipynb``.
    """
    with locked(registry_root(root)):
        pointer = _read_pointer(root)
        if pointer["version"] is None:
            raise RegistryError("nothing to roll back: no version has been promoted yet")
        if not pointer["previous"]:
            raise RegistryError(f"nothing to roll back to: {pointer['version']} is the first version promoted")
        target = pointer["previous"][-1]
        entry = get(target, root=root)
        _write_pointer(target, pointer["previous"][:-1], pointer["history"], root)
        _clean_locked(root)
    return entry


def compare(a: str, b: str, *, root: Path | str | None = None) -> Comparison:
    """Metric by metric, version ``b`` against version ``a`` (the union of both versions' metrics).

    A metric one version lacks shows ``None``; so do ``delta`` and ``relative`` then.
    ``format_table(compare("v1", "v2"))`` prints it, with columns titled ``v1`` and ``v2``.
    Introduced in ``11_iteration.ipynb``.
    """
    ma, mb = get(a, root=root).metrics, get(b, root=root).metrics
    rows = []
    for name in list(ma) + [k for k in mb if k not in ma]:
        va, vb = ma.get(name), mb.get(name)
        delta = vb - va if va is not None and vb is not None else None
        relative = delta / va if delta is not None and va != 0 else None
        rows.append(MetricRow(name, va, vb, delta, relative))
    return Comparison(rows, a, b)


def format_table(rows: Sequence[NamedTuple]) -> str:
    """A plain-text table of :func:`list_versions`, :func:`compare` or gate rows (``relative`` as %).

    A comparison's columns are titled with its two versions. Introduced in ``11_iteration.ipynb``;
    the rendering is :func:`helpers.cards.format_table`.
    """
    return cards.format_table(rows, labels=getattr(rows, "labels", None))


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
        return f"{cards.format_table(self.rows)}\n{self.verdict}"

    def to_markdown(self) -> str:
        return f"{cards.format_table(self.rows, 'markdown')}\n\n**{self.verdict}**"

    def _repr_html_(self) -> str:
        return f"{cards.format_table(self.rows, 'html')}<p><b>{html.escape(self.verdict)}</b></p>"

    def __str__(self) -> str:
        return self.table()


def _scores(results: Mapping[str, Mapping[str, Any]], key: str, which: str) -> Mapping[str, Any]:
    if key not in results:
        raise ValueError(
            f"{which} lacks {key!r} (has {', '.join(map(repr, results)) or 'nothing'}); score it with "
            "helpers.evaluation.document_nlls, or name the data with new_data= / old_data="
        )
    scores = results[key]
    if not isinstance(scores, Mapping) or not all(hasattr(r, "nll_sum") and hasattr(r, "num_tokens")
                                                  for r in scores.values()):
        raise TypeError(f"{which}[{key!r}] must map document names to NLLResult (helpers.evaluation.document_nlls)")
    return scores


def _run_smoke_test(smoke_test: Callable[[], bool | tuple[bool, str]] | None) -> GateRow:
    name, blank = "service smoke test", (None,) * 5
    if smoke_test is None:
        return GateRow(name, *blank, False, "not run: pass smoke_test= (a real request to the service)")
    try:
        result = smoke_test()
    except Exception as err:  # a failing service is a failed check, not a crash of the gate
        return GateRow(name, *blank, False, f"raised {type(err).__name__}: {err}")
    message = ""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        result, message = result
    if not isinstance(result, bool):
        return GateRow(name, *blank, False, f"returned {result!r}; expected True/False or (bool, message)")
    explanation = ("passed" if result else "failed") + (f": {message}" if message else "")
    return GateRow(name, *blank, result, explanation)


def _interval_row(check: str, candidate: Mapping[str, Any], current: Mapping[str, Any], bound: float,
                  rule: str, bootstrap: Mapping[str, Any]) -> GateRow:
    """One interval check: the upper end of the paired interval of (candidate - current) / current <= bound."""
    from helpers.evaluation import paired_bootstrap

    paired = paired_bootstrap(current, candidate, **bootstrap)
    change = paired.relative
    ppl_current = math.exp(sum(r.nll_sum for r in current.values()) / sum(r.num_tokens for r in current.values()))
    passed = change.high <= bound  # False when a diverged candidate makes it nan
    explanation = (f"{change.point:+.1%}, {bootstrap['confidence']:.0%} interval [{change.low:+.1%}, {change.high:+.1%}] "
                   f"over {len(current)} documents; {rule}: the whole interval at or below {bound:+.1%}")
    return GateRow(check, ppl_current + paired.difference.point, ppl_current, change.point,
                   f"[{change.low:+.1%}, {change.high:+.1%}]", f"≤ {bound:+.1%}", passed, explanation)


def gate(
    candidate: Mapping[str, Mapping[str, Any]],
    current: Mapping[str, Mapping[str, Any]],
    *,
    margin: float = 0.05,
    tolerance: float = 0.02,
    smoke_test: Callable[[], bool | tuple[bool, str]] | None = None,
    new_data: str = "new_data",
    old_data: str = "old_data",
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GateDecision:
    """Decide whether a candidate model replaces the current one, with intervals; every reason in one table.

    ``candidate`` and ``current`` map ``new_data`` and ``old_data`` to ``{document: NLLResult}``
    (``helpers.evaluation.document_nlls``), both models scored on the same *validation* documents:
    a gate is a choice, so it never reads a test split. With a paired bootstrap
    (``helpers.evaluation.paired_bootstrap``) of the relative change in perplexity, promote only
    if (1) the whole interval on the new data lies at least ``margin`` lower (0.05: its upper end
    at or below -5 %), (2) the whole interval on the old domain lies at most ``tolerance`` higher,
    and (3) ``smoke_test()`` passes: it returns ``True``/``False`` or ``(passed, message)``; raising
    counts as failing, and no smoke test at all fails too. Introduced in ``11_iteration.ipynb``.
    """
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1) (0.05 = 5 % lower perplexity), got {margin}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 (0.02 = at most 2 % higher perplexity), got {tolerance}")
    bootstrap = {"num_samples": num_samples, "confidence": confidence, "seed": seed}
    rows = []
    for check, key, bound, rule in (
        ("new-data improvement", new_data, -margin, f"needs at least {margin:.1%} lower"),
        ("old-domain regression", old_data, tolerance, f"allowed at most {tolerance:.1%} higher"),
    ):
        cand, cur = _scores(candidate, key, "candidate"), _scores(current, key, "current")
        if not all(math.isfinite(r.nll_sum) and r.num_tokens > 0 for r in cur.values()):
            raise ValueError(f"current[{key!r}] has a non-finite NLL or an empty document: not a model's scores")
        rows.append(_interval_row(check, cand, cur, bound, rule, bootstrap))
    rows.append(_run_smoke_test(smoke_test))
    return GateDecision(promote=all(row.passed for row in rows), rows=rows)


def promote_if_passes(decision: GateDecision, version: str, *, root: Path | str | None = None) -> Entry | None:
    """Promote ``version`` when ``decision.promote``; return its entry, or ``None`` when the gate said no.

    Introduced in ``11_iteration.ipynb``.
    """
    return promote(version, root=root) if decision.promote else None

