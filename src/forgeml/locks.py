"""One writer per run directory: an OS file lock on ``RUN/.lock``.

A command that writes to a run (train, resume, pipeline, each stage, export, report) holds the lock
exclusively for as long as it runs; a second writer is refused at once with one line that names
the holder. Readers (``forgeml.load``, and through it predict and serve) hold it shared while they
read the run's files, so they get a consistent snapshot and never see a run half rewritten; a
reader is refused at once while a writer works, and a writer waits a few seconds for readers to
finish loading before it is refused.

The lock is ``fcntl.flock``: the kernel releases it when its process ends, however it ends, so a
crashed writer never leaves a stale lock behind. The file itself stays and records who held it
last (pid, host, command, since): that is what the refusal message names. Locks are re-entrant
within a process: the pipeline holds a run and the stages it calls take the same lock again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from forgeml.errors import RunDirError

LOCK = ".lock"
T = TypeVar("T")


@dataclass
class _Held:
    fd: int
    exclusive: bool
    depth: int
    command: Optional[Sequence[str]]


_held: dict[str, _Held] = {}  # run directory (resolved) -> the lock this process holds on it


def _key(path: Path) -> str:
    return os.path.realpath(path)


def holder(path: str | Path) -> Optional[dict]:
    """Who holds (or last held) the run's write lock, as recorded in its lock file."""
    try:
        return json.loads((Path(path) / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_run(path: Path) -> bool:
    """What forgeml writes first into a run besides config.yaml: a folder holding only someone
    else's config.yaml gets no lock file."""
    return (path / "config.yaml").is_file() and any((path / name).exists() for name in ("features.json", "manifest.json", "checkpoints", LOCK))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(path: Path) -> str:
    info = holder(path)
    if not info or info.get("pid") is None or (info.get("host") == socket.gethostname() and not _alive(int(info["pid"]))):
        return "another process"  # the last writer on record has ended: a process it started, or a writer that is just starting
    return f"pid {info['pid']} on {info.get('host', '?')} ({info.get('command') or 'forgeml'}, since {info.get('since', '?')})"


READERS_WAIT = 10.0  # seconds a writer waits for readers, which hold the lock only while they load the run


def _lock_exclusive(fd: int, path: Path) -> None:
    """Take the exclusive lock on ``fd``: at once from a run nobody uses, after a short wait from
    readers that are loading it; a writer that holds it is refused at once.

    Raises:
        RunDirError: another process writes the run, or readers kept it longer than READERS_WAIT.
    """
    deadline = time.monotonic() + READERS_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        try:  # a shared lock granted now means the holders are readers, not a writer
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{path}: in use by {_describe(path)}; wait for it to finish, or use another run directory") from None
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.monotonic() > deadline:
            raise RunDirError(f"{path}: being read by other processes (forgeml predict or serve loading it) for over {READERS_WAIT:g} s; try again")
        time.sleep(0.05)


@contextlib.contextmanager
def writing(path: str | Path, command: Optional[Sequence[str]] = None, create: bool = False) -> Iterator[None]:
    """Hold the run's lock exclusively for the block.

    Args:
        path: the run directory.
        command: the command line to name in another writer's refusal (default: this process's).
        create: make the directory when it does not exist, and lock an empty one (a new run).
            Otherwise, and always for a directory that holds files but no config.yaml (not a run),
            nothing is locked or written: the caller's own check reports what is wrong.

    Raises:
        RunDirError: another process reads or writes the run; the message names the writer.
    """
    path = Path(path)
    key = _key(path)
    held = _held.get(key)
    if held is not None:
        if not held.exclusive:
            raise RunDirError(f"{path}: this process reads the run and cannot also write it")
        yield from _again(held)
        return
    if create:
        path.mkdir(parents=True, exist_ok=True)
    new_run = create and not any(entry.name != LOCK for entry in path.iterdir())
    if not new_run and not _is_run(path):  # not a run: the caller's own check says so, and nothing is written into it
        yield
        return
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock_exclusive(fd, path)
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, (holder_record(command) + "\n").encode())
    yield from _hold(key, _Held(fd, True, 1, command))


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Hold the run's lock shared for the block: no writer changes the run while it is read.

    A run this process already holds (for writing or reading) is read under that lock; a run on a
    read-only file system, whose lock file cannot be created, is read without one (nothing of
    forgeml can write it there either).

    Raises:
        RunDirError: a writer holds the run; the message names it.
    """
    path = Path(path)
    key = _key(path)
    held = _held.get(key)
    if held is not None:
        yield from _again(held)
        return
    if not _is_run(path):  # not a run: the reader's own check says so
        yield
        return
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        yield  # a run this process may not write, e.g. on a read-only mount
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"{path}: being written by {_describe(path)}; wait for it to finish") from None
    yield from _hold(key, _Held(fd, False, 1, None))


def _again(held: _Held) -> Iterator[None]:
    """A lock this process holds, taken once more (released with the outermost)."""
    held.depth += 1
    try:
        yield
    finally:
        held.depth -= 1


def _hold(key: str, held: _Held) -> Iterator[None]:
    _held[key] = held
    try:
        yield
    finally:
        held.depth -= 1
        if held.depth == 0:
            for name in [name for name, entry in _held.items() if entry is held]:  # relock may have renamed it
                del _held[name]
            fcntl.flock(held.fd, fcntl.LOCK_UN)
            os.close(held.fd)


def moved(old: str | Path, new: str | Path) -> None:
    """A held run directory was renamed: keep its lock under the new name."""
    held = _held.pop(_key(Path(old)), None)
    if held is not None:
        _held[_key(Path(new))] = held


def relock(held_as: str | Path, path: str | Path) -> None:
    """Move the lock held on ``held_as`` to the lock file now at ``path`` (a run directory that took
    its place, e.g. the new run of an --overwrite): lock the new file, then let go of the old one.
    Nothing happens when this process does not hold ``held_as``.

    Raises:
        RunDirError: another process took the new directory's lock first.
    """
    held = _held.pop(_key(Path(held_as)), None)
    if held is None:
        return
    path = Path(path)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if held.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        _held[_key(Path(held_as))] = held
        raise RunDirError(f"{path}: in use by {_describe(path)}; wait for it to finish, or use another run directory") from None
    if held.exclusive:
        os.ftruncate(fd, 0)
        os.write(fd, (holder_record(held.command) + "\n").encode())
    fcntl.flock(held.fd, fcntl.LOCK_UN)
    os.close(held.fd)
    held.fd = fd
    _held[_key(path)] = held


def holder_record(command: Optional[Sequence[str]]) -> str:
    """The lock file's line: who holds it, to name in a refusal."""
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(command or ["forgeml", *sys.argv[1:]]), "since": time.strftime("%Y-%m-%d %H:%M:%S")})


def writes_run(function: Callable[..., T]) -> Callable[..., T]:
    """Run a stage function (its first argument a run directory or a Predictor of one) under the
    run's write lock; with ``save=False`` it writes nothing and takes no lock."""

    @functools.wraps(function)
    def locked(target: Any, *args: Any, **kwargs: Any) -> T:
        if kwargs.get("save", True) is False:
            return function(target, *args, **kwargs)
        run = getattr(target, "run", None)
        with writing(run.path if run is not None else Path(target)):
            return function(target, *args, **kwargs)

    return locked
