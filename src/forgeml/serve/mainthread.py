"""Model calls on the process's main thread, with uvicorn's event loop on another.

torch on CPU runs markedly slower when called from a thread other than the one its OpenMP threads
started from: the same ``Predictor.stream`` loop measured 547-643 tokens/s in a main thread and
239-278 in a second one, and a MiniLM forward pass 13 ms against 15-17 ms (benchmarks/README.md).
A server must keep its event loop free, so ``forgeml serve`` turns the usual arrangement around:
the HTTP server runs in a thread, and the main thread does nothing but the model's work, handed to
it through ``MainThreadExecutor`` (the batcher's calls, the model's loading and each generation).
"""

from __future__ import annotations

import queue
from concurrent.futures import Executor, Future
from typing import Any, Callable


class MainThreadExecutor(Executor):
    """An executor whose calls run, one at a time and in order, in the thread that calls ``run``."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("the model thread has stopped")
        future: Future = Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True

    def run(self, until: Callable[[], bool], poll: float = 0.05) -> None:
        """Run submitted calls until ``until()`` is true and nothing is waiting."""
        while True:
            try:
                future, fn, args, kwargs = self._work.get(timeout=poll)
            except queue.Empty:
                if until():
                    return
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller awaiting the future
                future.set_exception(exc)
            else:
                future.set_result(result)
