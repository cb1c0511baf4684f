"""SIGTERM raised as Terminated inside sigterm_raises, once; the previous handler back after it.
(tests/e2e/test_resume.py sends SIGTERM to a real training process.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from forgeml.signals import EXIT_CODE, Terminated, sigterm_raises


def test_sigterm_raises_terminated_then_gets_its_default_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted: the handler runs at once
    assert signal.getsignal(signal.SIGTERM) == before
    with sigterm_raises():
        assert callable(signal.getsignal(signal.SIGTERM))
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Terminated:
            # a second SIGTERM during the clean-up would kill the process: the default is back
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == before
    assert EXIT_CODE == 143
    assert not issubclass(Terminated, Exception) and not issubclass(Terminated, KeyboardInterrupt)


def test_outside_the_main_thread_nothing_changes() -> None:
    seen = []

    def worker() -> None:
        with sigterm_raises():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]
