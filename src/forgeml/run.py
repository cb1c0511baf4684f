"""The run directory: the on-disk contract between training and every later stage.

    runs/<name>/
      config.yaml  features.json  model.safetensors  metrics.json  history.jsonl  manifest.json
      checkpoints/step-000123/{model,optimizer}.safetensors + state.json + manifest.json
      checkpoints/latest        name of the newest complete checkpoint
      <stage>.json              results of evaluate / explain / attack / ...

Every write goes to a temporary name, is fsynced and renamed, so a crash never leaves a half file
under a real name. ``manifest.json`` holds the sha256 of every artifact and is checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from forgeml import locks
from forgeml.errors import RunDirError
from forgeml.files import atomic_write, remove_leftovers, replace_dir, sha256_file, staging_dir

MANIFEST = "manifest.json"
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"
LOCK = locks.LOCK
LATEST = "latest"
# What every finished run holds, as training writes it; forgeml.load reads the first three.
REQUIRED_FILES = ("config.yaml", "features.json", "model.safetensors", "metrics.json")
SHA256 = re.compile(r"[0-9a-f]{64}")


def _json_kind(value: Any) -> str:
    """How a message names a parsed JSON value's type: object, list, string, number, boolean or null."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()


class RunDir:
    """A run directory on disk. Create one with ``RunDir.create``, open an existing one with ``RunDir.open``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- creating and opening

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> "RunDir":
        """A new, empty run directory. An existing non-empty one is an error unless ``overwrite``.

        ``overwrite`` replaces only a forgeml run that holds nothing but its own files: the old run
        is renamed aside at once (``.NAME.replaced`` beside it) and the new one starts empty; the
        caller removes the old one with ``drop_replaced`` when the new one is complete, or puts it
        back with ``restore_replaced``. The caller holds the run's write lock (``locks.writing``),
        which moves to the new directory.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path}: exists and is not a directory")
        replaced = None
        if path.is_dir() and any(entry.name != LOCK for entry in path.iterdir()):
            if not overwrite and not (path / "config.yaml").is_file():  # offer --overwrite only for a run
                raise RunDirError(f"{path}: exists and holds files, but is not a forgeml run directory; choose another with --out")
            if not overwrite:
                raise RunDirError(
                    f"{path}: the run directory already exists; continue it with --resume {path}, "
                    f"replace it with --overwrite, or choose another with --out"
                )
            check_replaceable(path)
            replaced = path.parent / f".{path.name}.replaced"
            if replaced.exists():  # the aside of an earlier replacement that never finished
                check_replaceable(replaced)
                shutil.rmtree(replaced)
            os.replace(path, replaced)
            locks.moved(path, replaced)
        path.mkdir(parents=True, exist_ok=True)
        if replaced is not None:
            locks.relock(replaced, path)
        run = cls(path)
        run.replaced = replaced
        return run

    replaced: Path | None = None  # the run this one replaces, renamed aside until this one is complete

    def drop_replaced(self) -> None:
        """Remove the run this one replaced (it held only its own files: ``create`` checked)."""
        if self.replaced is not None and self.replaced.is_dir():
            shutil.rmtree(self.replaced)
        self.replaced = None

    def restore_replaced(self) -> None:
        """Put the replaced run back in place of this one, which is removed (nothing of it is kept)."""
        if self.replaced is None or not self.replaced.is_dir():
            return
        shutil.rmtree(self.path)
        os.replace(self.replaced, self.path)
        locks.relock(self.path, self.path)  # the lock file in place now is the old run's
        self.replaced = None

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (it must at least hold config.yaml)."""
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path}: no such run directory")
        if not (path / "config.yaml").is_file():
            raise RunDirError(f"{path}: not a forgeml run directory (no config.yaml)")
        return cls(path)

    def remove_leftovers(self) -> list[str]:
        """Remove what writes interrupted by a kill or a crash left in the run: temporary files at its
        top and in checkpoints/, checkpoint staging directories and the export bundle's (forgeml
        export's default RUN/export). Called by the run's one writer when it opens the run.

        Returns:
            The paths removed, relative to the run.
        """
        removed = remove_leftovers(self.path, staged="export")
        return removed + [f"{CHECKPOINTS}/{name}" for name in remove_leftovers(self.path / CHECKPOINTS, staged=r"step-\d+")]

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- files

    def write_bytes(self, name: str, data: bytes) -> Path:
        atomic_write(self.path / name, data)
        return self.path / name

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_bytes(name, json_bytes(data))

    def record(self, name: str, key: str, value: Any, files: Iterable[str] = ()) -> None:
        """Set ``key`` of the JSON stage result ``name`` (evaluate.json, attack.json, ...), keeping its
        other entries, and record it and ``files`` (the stage's pictures) in the manifest."""
        existing = self.read_json(name) if (self.path / name).is_file() else {}
        existing[key] = value
        self.write_json(name, existing)
        self.write_manifest([name, *files])

    def write_yaml(self, name: str, data: Any) -> Path:
        return self.write_bytes(name, yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode())

    def read_json(self, name: str) -> Any:
        path = self.path / name
        if not path.is_file():
            raise RunDirError(f"{path}: missing from the run directory")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None

    def read_yaml(self, name: str) -> Any:
        path = self.path / name
        if not path.is_file():
            raise RunDirError(f"{path}: missing from the run directory")
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise RunDirError(f"{path}: corrupt YAML") from None

    # -- history

    def append_history(self, record: dict[str, Any]) -> None:
        """Append one JSON line (appends are small; a torn last line is dropped on resume)."""
        with (self.path / HISTORY).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_history(self) -> list[dict[str, Any]]:
        path = self.path / HISTORY
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash
        return records

    def truncate_history(self, last_step: int) -> None:
        """Keep only records up to ``last_step`` (resuming from a checkpoint at that step)."""
        kept = [r for r in self.read_history() if r.get("step", 0) <= last_step]
        self.write_bytes(HISTORY, "".join(json.dumps(r) + "\n" for r in kept).encode())

    # -- manifest

    def write_manifest(self, names: Iterable[str] | None = None) -> None:
        """Record the sha256 of ``names`` (default: every file at the top level) in manifest.json."""
        manifest = self.read_json(MANIFEST)["files"] if (self.path / MANIFEST).is_file() else {}
        if names is None:
            names = [p.name for p in sorted(self.path.iterdir()) if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")]
        for name in names:
            manifest[name] = sha256_file(self.path / name)
        self.write_json(MANIFEST, {"files": dict(sorted(manifest.items()))})

    def verify(self, names: Iterable[str]) -> None:
        """Check ``names`` against manifest.json.

        The manifest must list each of ``names`` and every file a finished run holds (``REQUIRED_FILES``):
        a file it leaves out could not be checked, so a manifest emptied or cut down is refused too.

        Raises:
            RunDirError: no manifest, a manifest that is not ``{"files": {file: sha256}}`` or leaves
                a file out, or a file missing or changed since the manifest was written.
        """
        if not (self.path / MANIFEST).is_file():
            raise RunDirError(f"{self.path}: no manifest.json; the run did not finish (resume it with --resume)")
        manifest = self._manifest_files()
        names = list(names)
        unlisted = [name for name in dict.fromkeys([*REQUIRED_FILES, *names]) if name not in manifest]
        if unlisted:
            raise RunDirError(
                f"{self.path / MANIFEST}: does not list {', '.join(unlisted)}, so the run cannot be checked; "
                "it was cut down or edited (train the run again)"
            )
        for name in names:
            path = self.path / name
            if not path.is_file():
                raise RunDirError(f"{path}: missing from the run directory")
            if sha256_file(path) != manifest[name]:
                raise RunDirError(f"{path}: corrupt (its sha256 does not match manifest.json)")

    def _manifest_files(self) -> dict[str, str]:
        """manifest.json's file -> sha256 entries, its shape checked: anything else in their place
        would make verify check nothing."""
        manifest = self.read_json(MANIFEST)
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict):
            if not isinstance(manifest, dict):
                found = f"found {_json_kind(manifest)}"
            else:
                found = f"'files' is {_json_kind(files)}" if "files" in manifest else "no 'files'"
            raise RunDirError(f"{self.path / MANIFEST}: not a forgeml manifest (expected {{\"files\": {{file: sha256}}}}; {found})")
        for name, digest in files.items():
            if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
                raise RunDirError(f"{self.path / MANIFEST}: the entry for {name!r} is {json.dumps(digest)[:80]}, not a sha256 (64 hex digits)")
        return files

    # -- checkpoints

    def save_checkpoint(self, step: int, files: dict[str, bytes], keep: int) -> Path:
        """Write a complete checkpoint directory, then point ``checkpoints/latest`` at it.

        The files go into a hidden temporary directory with their own manifest; only when all are
        fsynced is it renamed to ``step-NNNNNN``, so a directory with that name is always complete.
        """
        root = self.path / CHECKPOINTS
        root.mkdir(exist_ok=True)
        name = f"step-{step:06d}"
        tmp = staging_dir(root, name)
        try:
            for filename, data in files.items():
                atomic_write(tmp / filename, data)
            atomic_write(tmp / MANIFEST, json_bytes({"files": {f: hashlib.sha256(d).hexdigest() for f, d in files.items()}}))
            final = root / name
            replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write(root / LATEST, (name + "\n").encode())
        for old in self.checkpoint_names()[keep:]:
            shutil.rmtree(root / old, ignore_errors=True)
        return final

    def checkpoint_names(self) -> list[str]:
        """Complete checkpoint directories, newest first."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        names = [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
        return sorted(names, key=lambda name: int(name[5:]), reverse=True)

    def load_checkpoint(self, warn: Callable[[str], None] = print) -> tuple[str, dict[str, bytes]] | None:
        """The newest checkpoint whose files all match their sha256, as raw bytes.

        A corrupt or incomplete checkpoint is reported through ``warn`` and skipped in favour of the
        previous one. Returns None when the run has no usable checkpoint.
        """
        root = self.path / CHECKPOINTS
        names = self.checkpoint_names()
        latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
        if latest in names:  # trust `latest` first, then fall back by age
            names.remove(latest)
            names.insert(0, latest)
        for name in names:
            problem, files = _read_checkpoint(root / name)
            if problem is None:
                return name, files
            warn(f"checkpoint {name} is unusable ({problem}); falling back to the previous one")
        return None


def _read_checkpoint(path: Path) -> tuple[str | None, dict[str, bytes]]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json", {}
    try:
        manifest = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return "corrupt manifest.json", {}
    files = {}
    for filename, expected in manifest.items():
        file_path = path / filename
        if not file_path.is_file():
            return f"{filename} is missing", {}
        data = file_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            return f"{filename}: sha256 mismatch, the file is truncated or corrupt", {}
        files[filename] = data
    return None, files


# What forgeml writes at the top of a run besides the files its manifest lists: what an unfinished
# run holds before its manifest exists, and the folders of the stages
OWN_FILES = {*REQUIRED_FILES, "tokenizer.json", "base_model.json", MANIFEST, HISTORY, LOCK, "pipeline.json", "report.html", "report.json"}
RUN_FOLDERS = {CHECKPOINTS, "export", "explanations", "tokens", ".tokens.tmp"}  # tokens: a language model's encoded corpus
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}(\.tmp)?")  # files.atomic_write's and staging_dir's names


def check_replaceable(path: Path) -> None:
    """Raise RunDirError unless ``path`` is a forgeml run (its config.yaml and, once written, its
    manifest parse and describe a run) holding nothing but what forgeml wrote there: --overwrite
    must never delete a file forgeml did not write."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        config = None
    if not isinstance(config, dict) or not {"data", "model"} <= set(config):
        raise RunDirError(f"{path}: not a forgeml run directory; refusing to overwrite it")
    listed: set[str] = set()
    if (path / MANIFEST).exists():
        try:
            files = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError, AttributeError):
            files = None
        if not isinstance(files, dict):
            raise RunDirError(f"{path}: its manifest.json does not describe a run; refusing to overwrite it")
        listed = set(files)
    foreign = sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in path.iterdir()
        if not (entry.name in listed or entry.name in OWN_FILES or _TEMPORARY.fullmatch(entry.name)
                or (entry.name in RUN_FOLDERS and entry.is_dir() and not entry.is_symlink()))
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunDirError(f"{path}: holds files that are not part of the run ({shown}); refusing to overwrite it (move them out, or choose another --out)")
