"""``forgeml serve RUN_OR_BUNDLE``: a model behind HTTP, on FastAPI and uvicorn.

    forgeml serve runs/mnist_cnn                       # the run's Predictor (torch)
    forgeml serve runs/mnist_cnn --backend onnx        # its export bundle, on ONNX Runtime
    curl -s localhost:8000/v1/predict -d '{"instances": [...]}'

Endpoints: ``POST /v1/predict``, ``GET /v1/metadata``, ``/healthz``, ``/readyz``, ``/metrics``
(Prometheus), the Open Inference Protocol under ``/v2`` (``serve.v2``), the OpenAPI document at
``/openapi.json`` and a playground page at ``/``. Concurrent requests are batched (``serve.batching``);
limits, auth and errors are described in ``serve.app`` and ``serve.guard``. On SIGTERM the server
turns unready (readyz 503), finishes the requests it accepted and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import uvicorn

from forgeml.serve.mainthread import MainThreadExecutor
from forgeml.serve.settings import ServeSettings

SETTINGS_ENV = "FORGEML_SERVE_SETTINGS"  # how --workers N hands the settings to each worker process


def build_app(settings: ServeSettings, executor: Any = None) -> Any:
    """The application for ``settings`` (the model is loaded after start-up, in ``executor``: see
    ``create_app``)."""
    from forgeml.serve.app import create_app
    from forgeml.serve.model import load_model

    return create_app(settings, lambda: load_model(settings.target, settings.backend, settings.name, settings.threads), executor)


def app_from_environment() -> Any:
    """uvicorn's factory for worker processes (``--workers N``): the settings come in the environment."""
    return build_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]))


def serve(settings: ServeSettings, on_listening: Any = None) -> None:
    """Run the server until SIGTERM or Ctrl-C.

    Args:
        settings: see ``ServeSettings``.
        on_listening: called with the bound (host, port) once the server accepts connections.
    """
    from forgeml.serve.model import load_model

    settings.token()  # an unreadable token file is refused before anything starts
    if settings.workers > 1:
        # each worker loads its own model; the check here makes a bad target one line, not N tracebacks
        load_model(settings.target, settings.backend, settings.name, settings.threads)
        os.environ[SETTINGS_ENV] = json.dumps(settings.model_dump(mode="json"))
        uvicorn.run(
            "forgeml.serve:app_from_environment", factory=True, host=settings.host, port=settings.port,
            workers=settings.workers, log_level="warning", access_log=False,
        )
        return
    # the model works on this (the main) thread, where torch is fastest, and HTTP on another (serve.mainthread)
    executor = MainThreadExecutor()
    app = build_app(settings, executor)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False, lifespan="on")
    server = DrainingServer(config, app.state.server, on_listening)
    ended: list[BaseException] = []

    def run_http() -> None:
        try:
            server.run()
        except BaseException as exc:  # noqa: BLE001 - e.g. uvicorn's SystemExit(3) when the port is taken: raised again below
            ended.append(exc)

    http = threading.Thread(target=run_http, name="forgeml-http", daemon=True)
    # uvicorn listens to signals only in the main thread: here they reach it through this handler
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        executor.run(until=lambda: not http.is_alive())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    http.join()
    if ended:
        raise ended[0]


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, made unready as soon as a shutdown signal arrives (so a load balancer stops
    sending while accepted requests finish), and saying where it listens."""

    def __init__(self, config: uvicorn.Config, state: Any, on_listening: Any = None):
        super().__init__(config)
        self.state = state
        self.on_listening = on_listening

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.state.draining = True
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutting down, so the process would die of it; a server
        # stopped on purpose that finished its requests has succeeded: exit 0
        self._captured_signals.clear()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.on_listening is not None and self.servers:
            address = self.servers[0].sockets[0].getsockname()
            self.on_listening(address[0], address[1])
