"""Files written whole or not at all: every write goes to a temporary name in the same folder, is
fsynced and renamed, so a crash never leaves a half file under a real name."""

from __future__ import annotations

import hashlib
import os
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


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
