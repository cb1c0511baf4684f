"""The batcher on its own (in-process, asyncio): requests on their way in join one model call, each
caller gets its own rows back, a request alone runs at once, max_batch and max_queue hold; and the
application turns unready while it drains."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from helpers import tiny_config

import forgeml
from forgeml.serve import DrainingServer, build_app
from forgeml.serve.batching import Batcher, QueueFull
from forgeml.serve.settings import ServeSettings, parse_size


def run_requests(count: int, max_batch: int, max_wait: float, stagger: float = 0.005) -> tuple[list[int], list[np.ndarray]]:
    calls: list[int] = []

    def model(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return rows * 2

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(model, max_batch=max_batch, max_wait=max_wait, max_queue=100)
        batcher.start()

        async def one(i: int) -> np.ndarray:
            with batcher.admission():
                await asyncio.sleep(stagger * i)  # encoding takes a while, longer for later arrivals
                future = batcher.submit(np.full((1, 3), float(i)))
            return await future

        try:
            return await asyncio.gather(*[one(i) for i in range(count)])
        finally:
            await batcher.stop()

    return calls, asyncio.run(scenario())


def test_requests_on_their_way_in_share_one_call_and_get_their_own_rows():
    calls, results = run_requests(6, max_batch=16, max_wait=5.0)
    assert calls == [6]
    assert [r.tolist() for r in results] == [[[2.0 * i] * 3] for i in range(6)]


def test_max_batch_is_respected():
    calls, results = run_requests(10, max_batch=4, max_wait=5.0, stagger=0)
    assert sum(calls) == 10 and max(calls) <= 4
    assert [float(r[0, 0]) for r in results] == [2.0 * i for i in range(10)]


def test_a_request_alone_runs_at_once():
    started = time.perf_counter()
    calls, results = run_requests(1, max_batch=16, max_wait=30.0)
    assert calls == [1] and time.perf_counter() - started < 10  # nowhere near the 30 s max_wait


def test_a_full_queue_refuses_at_once():
    async def scenario() -> None:
        batcher = Batcher(lambda rows: rows, max_batch=4, max_wait=0.01, max_queue=2)
        with batcher.admission(), batcher.admission():
            with pytest.raises(QueueFull):
                with batcher.admission():
                    pass

    asyncio.run(scenario())


def test_sizes_parse_in_binary_and_decimal_units():
    assert [parse_size(s) for s in ("10MiB", "512kB", "1000", "1.5 KiB", "2gb")] == [10 * 1024**2, 512_000, 1000, 1536, 2 * 10**9]
    with pytest.raises(ValueError, match="not a size"):
        parse_size("ten megabytes")


def test_the_app_turns_unready_while_it_drains(tmp_path: Path):
    run = forgeml.train(tiny_config(train={"epochs": 1, "max_steps": 2, "batch_size": 32}), out=tmp_path / "run", quiet=True).run_dir
    app = build_app(ServeSettings(target=str(run)))
    state = app.state.server
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").json() == {"status": "ready"}
        server = DrainingServer(uvicorn.Config(app), state)
        server.handle_exit(signal.SIGTERM, None)  # what uvicorn calls on SIGTERM
        assert state.draining and server.should_exit and server._captured_signals == []  # exit 0, not death by the signal
        assert client.get("/readyz").status_code == 503 and client.get("/readyz").json() == {"status": "draining"}
        assert client.get("/v2/health/ready").status_code == 503
        assert client.post("/v1/predict", json={"instances": ["AAAA"]}).json() == {"error": "the server is shutting down"}
        assert client.get("/healthz").status_code == 200
