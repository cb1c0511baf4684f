"""SIGTERM stops a command the way Ctrl-C does.

A scheduler preempting a job, ``docker stop``, ``kill`` and torchrun shutting its workers down all
send SIGTERM, whose default is to die at once: mid-write, without the "continue it with --resume"
line. ``sigterm_raises`` turns it into a ``Terminated`` exception in the main thread, which goes up
the same path as Ctrl-C's KeyboardInterrupt: every ``except BaseException`` that removes a
half-written file or keeps a run's checkpoints runs, and the CLI exits 143 (128 + 15, what a shell
reports for a process killed by SIGTERM). Torch-free, like every module of its layer.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_CODE = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so ``except Exception`` never
    swallows it; not a KeyboardInterrupt, so the CLI can tell the two apart (typer turns a
    KeyboardInterrupt into exit code 130 before the CLI sees it)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Raise ``Terminated`` in the main thread on the first SIGTERM while the block runs.

    A second SIGTERM gets the default action (die at once), so a clean-up that hangs can still be
    ended. Outside the main thread (where Python cannot set handlers) nothing changes. A server that
    installs its own handler while it runs (uvicorn does, for forgeml serve) keeps its own behaviour.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)  # None: set outside Python
