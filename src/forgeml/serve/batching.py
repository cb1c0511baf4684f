"""Dynamic batching: requests that arrive together share one model call.

Each request hands in its encoded rows and awaits a future. One worker task takes the oldest waiting
request and gathers more until ``max_batch`` rows or ``max_wait`` seconds, runs them as one call in
a model thread (so the event loop keeps accepting and answering while the model runs), and hands
each request exactly its own rows of the outputs. A request alone in the server (nothing queued and
nothing on its way in) is run at once rather than made to wait for company. The queue is bounded:
when ``max_queue`` requests already wait, ``submit`` refuses at once, so an overloaded server
answers 429 instead of growing a backlog of minutes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


class QueueFull(Exception):
    """``max_queue`` requests are already waiting."""


@dataclass
class _Item:
    rows: np.ndarray
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers concurrent requests into model calls of at most ``max_batch`` rows.

    Args:
        run: encoded rows (N x ...) -> outputs (N x ...), the model call; run in ``executor``, by
            default one dedicated thread.
        max_batch: most rows per call (a single larger request still runs, alone).
        max_wait: seconds the first request of a batch waits for others.
        max_queue: requests that may wait; one more raises QueueFull.
        observe: called with each batch's row count (the batch-size histogram).
        executor: where model calls run, one at a time (default: a thread of the Batcher's own).
    """

    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait: float, max_queue: int,
        observe: Optional[Callable[[int], None]] = None, executor: Optional[Executor] = None,
    ):
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.observe = observe or (lambda size: None)
        self.waiting: collections.deque[_Item] = collections.deque()
        self.arriving = 0  # requests admitted and still being encoded: worth waiting for
        self._wake = asyncio.Event()
        self._owns_executor = executor is None  # forgeml serve hands in its main thread's (serve.mainthread)
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="forgeml-model")
        self._worker: Optional[asyncio.Task] = None

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch running now)."""
        return len(self.waiting)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for item in self.waiting:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def admission(self):
        """Admit a request (QueueFull when the queue is full): while it is encoded, the worker knows
        one more request is on its way and waits for it up to max_wait."""
        if len(self.waiting) + self.arriving >= self.max_queue:
            # requests that timed out stay queued until the worker reaches them: they hold no place
            self.waiting = collections.deque(item for item in self.waiting if not item.future.done())
            if len(self.waiting) + self.arriving >= self.max_queue:
                raise QueueFull
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._wake.set()

    def submit(self, rows: np.ndarray) -> asyncio.Future:
        """Queue encoded rows; the future's result is their outputs. Call within ``admission()``."""
        item = _Item(rows, asyncio.get_running_loop().create_future())
        self.waiting.append(item)
        self._wake.set()
        return item.future

    async def _next_batch(self) -> list[_Item]:
        while not self.waiting:
            self._wake.clear()
            await self._wake.wait()
        batch = [self.waiting.popleft()]
        rows = len(batch[0].rows)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while rows < self.max_batch:
            if self.waiting:
                if rows + len(self.waiting[0].rows) > self.max_batch:
                    break  # it leads the next batch
                item = self.waiting.popleft()
                batch.append(item)
                rows += len(item.rows)
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if self.arriving == 0 or remaining <= 0:
                break  # alone, or waited long enough
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        return [item for item in batch if not item.future.done()]  # a timed-out caller has gone

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            inputs = batch[0].rows if len(batch) == 1 else np.concatenate([item.rows for item in batch])
            self.observe(len(inputs))
            try:
                outputs: Any = await loop.run_in_executor(self._executor, self.run, inputs)
            except Exception as exc:  # noqa: BLE001 - handed to each caller, who answers for it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            start = 0
            for item in batch:
                end = start + len(item.rows)
                if not item.future.done():
                    item.future.set_result(outputs[start:end])
                start = end
