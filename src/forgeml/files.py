"""Files written whole or not at all: every write goes to a temporary name in the same folder, is
fsynced and renamed, so a crash never leaves a half file under a real name."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what a plain open() would give; mkstemp's 0600 is not
DIR_MODE = 0o777 & ~_current_umask()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def staging_dir(parent: Path, name: str) -> Path:
    """A new hidden directory in ``parent`` to build ``name`` in before ``replace_dir`` puts it in
    place, with a plain mkdir's permissions (mkdtemp's 0700 would hide the result from other users)."""
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    os.chmod(staged, DIR_MODE)
    return staged


def replace_dir(staged: Path, final: Path) -> None:
    """Put a complete directory built in ``staged`` at ``final``, replacing what was there."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    fsync_dir(final.parent)


# What tempfile puts between the prefix and the suffix of the names above: 8 of [a-z0-9_]
_RANDOM_PART = "[a-z0-9_]{8}"


def remove_leftovers(folder: Path, staged: str) -> list[str]:
    """Remove what writes interrupted by a kill or a crash left directly in ``folder`` (not below
    it): ``atomic_write``'s temporary files (``.NAME.XXXXXXXX.tmp``) and ``staging_dir``'s
    directories (``.NAME.XXXXXXXX``) of the names that fully match the regular expression
    ``staged``. Nothing else is touched, and a link is never followed. Call it only as the folder's
    one writer: another process's write in progress would lose its temporary file.

    Returns:
        The names removed, sorted.
    """
    temporary_file = re.compile(rf"\..+\.{_RANDOM_PART}\.tmp")
    staging = re.compile(rf"\.(?:{staged})\.{_RANDOM_PART}")
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.is_symlink():
            continue
        if entry.is_file() and temporary_file.fullmatch(entry.name):
            entry.unlink(missing_ok=True)
        elif entry.is_dir() and staging.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            continue
        removed.append(entry.name)
    return removed


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
