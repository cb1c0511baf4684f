"""The FastAPI application of ``forgeml serve``: forgeml's own /v1 API, health probes, Prometheus
metrics and the playground page; the Open Inference Protocol routes are in ``serve.v2``.

Every answer that is not a success is ``{"error": "..."}`` with a 4xx status that says what to fix
(the field, the limit), or 503/504 for a server that is not ready or a result that took too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from concurrent.futures import Executor
from importlib.resources import files
from typing import Any, Callable, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from forgeml.errors import ForgeError
from forgeml.serve.batching import Batcher, QueueFull
from forgeml.serve.guard import Guard
from forgeml.serve.model import RequestError, ServedModel, describe
from forgeml.serve.openai import ServedLanguageModel, add_openai_routes, describe_language_model
from forgeml.serve.settings import ServeSettings

KNOWN_PATHS = {
    "/", "/healthz", "/readyz", "/metrics", "/v1/predict", "/v1/metadata", "/openapi.json", "/docs", "/v2", "/v2/health/live", "/v2/health/ready",
    "/v1/models", "/v1/completions", "/v1/chat/completions",
}
OPENAI_PATHS = ("/v1/models", "/v1/completions", "/v1/chat/completions")  # errors in OpenAI's shape, which its client reads


class PredictRequest(BaseModel):
    """POST /v1/predict: the instances to predict."""

    model_config = ConfigDict(extra="forbid")
    instances: list[Any] = Field(
        min_length=1,
        description="One per prediction: an object {column: value} (a base64 string for an image column), or for a model of one "
        "input column the bare value (a text, a base64 image). A forecaster's instance is {column: [values, oldest first]}.",
    )


class Metrics:
    """Prometheus metrics of one server process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("forgeml_requests", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "forgeml_request_seconds", "Time to answer a request, by endpoint.", ["endpoint"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch = Histogram("forgeml_batch_size", "Rows per model call.", registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.queue = Gauge("forgeml_queue_depth", "Requests waiting for the model.", registry=self.registry)


class ServerState:
    """What the routes share: the settings, the model once loaded, the batcher, readiness."""

    def __init__(self, settings: ServeSettings, load: Callable[[], ServedModel], executor: Optional[Executor] = None):
        self.settings = settings
        self.load = load
        self.executor = executor  # where the model loads and runs (None: threads of their own)
        self.model: Optional[Union[ServedModel, ServedLanguageModel]] = None
        self.batcher: Optional[Batcher] = None
        self.metrics = Metrics()
        self.failed: Optional[str] = None
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining

    def require_model(self) -> tuple[Any, Optional[Batcher]]:
        if self.draining:
            raise HTTPException(503, "the server is shutting down")
        if self.model is None:
            raise HTTPException(503, f"the model failed to load: {self.failed}" if self.failed else "the model is still loading; try again shortly")
        return self.model, self.batcher

    async def infer(self, encode: Callable[[ServedModel], np.ndarray]) -> tuple[ServedModel, np.ndarray]:
        """Encode a request (in a thread), run it in a batch, return the model and its raw outputs.

        Raises HTTPException: 503 not ready, 429 queue full, 422 bad instances, 504 over the timeout.
        """
        model, batcher = self.require_model()
        if batcher is None:
            raise HTTPException(400, f"model {model.name!r} is a language model: continue a text with /v1/completions (or /v1/chat/completions)")
        started = time.perf_counter()
        try:
            with batcher.admission():
                rows = await run_in_threadpool(encode, model)
                future = batcher.submit(rows)
        except QueueFull:
            raise HTTPException(429, f"the server is busy ({batcher.max_queue} requests waiting); retry shortly", headers={"Retry-After": "1"}) from None
        except RequestError as exc:
            raise HTTPException(422, str(exc)) from None
        finally:
            self.metrics.queue.set(batcher.depth)
        remaining = self.settings.timeout_s - (time.perf_counter() - started)
        try:
            outputs = await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.0))
        except asyncio.TimeoutError:
            future.cancel()  # the batch drops it; its model call, if running, finishes unseen
            raise HTTPException(504, f"no result within the server's timeout of {self.settings.timeout_s:g} s") from None
        if not np.isfinite(outputs).all():  # diverged weights, or an input far outside the training data: no prediction, and no 5xx
            raise HTTPException(422, "the model's outputs for these instances are not finite numbers (nan or inf), so there is no prediction")
        return model, outputs


def endpoint_label(path: str) -> str:
    """The path as a metrics label: known paths as they are, /v2 model paths with {name}, else other."""
    if path in KNOWN_PATHS:
        return path
    return re.sub(r"^/v2/models/[^/]+", "/v2/models/{name}", path) if path.startswith("/v2/models/") else "other"


class Measured:
    """ASGI middleware: counts every answer by endpoint and status and times it."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            label = endpoint_label(scope.get("path", ""))
            self.metrics.requests.labels(label, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)


def create_app(settings: ServeSettings, load: Callable[[], ServedModel], executor: Optional[Executor] = None) -> FastAPI:
    """The application; ``load()`` loads the model after start-up (readyz is 503 until then), in
    ``executor`` (``forgeml serve`` passes its main thread's) or a thread of its own, where the
    model's calls run too."""
    state = ServerState(settings, load, executor)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        def loaded(model: Union[ServedModel, ServedLanguageModel]) -> None:
            if isinstance(model, ServedModel):  # a language model generates request by request instead
                state.batcher = Batcher(model.run_outputs, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue, state.metrics.batch.observe, executor)
                state.batcher.start()
            state.model = model

        async def loading() -> None:
            try:
                model = await asyncio.get_running_loop().run_in_executor(executor, load)
            except ForgeError as exc:
                state.failed = str(exc)
                return
            loaded(model)

        task = asyncio.get_running_loop().create_task(loading())
        yield
        task.cancel()
        if state.batcher is not None:
            await state.batcher.stop()

    app = FastAPI(
        title="forgeml serve", version="1", lifespan=lifespan,
        description="Predictions of one forgeml model: forgeml's /v1 API and the Open Inference Protocol (/v2).",
    )
    app.state.server = state
    _errors(app)
    _routes(app, state)
    from forgeml.serve.v2 import add_v2_routes

    add_v2_routes(app, state)
    add_openai_routes(app, state)
    app.add_middleware(Guard, token=settings.token(), max_body_bytes=settings.max_body_bytes)
    app.add_middleware(Measured, metrics=state.metrics)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(_error_body(request, str(exc.detail), exc.status_code), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        return JSONResponse(_error_body(request, f"{where}: {first.get('msg', 'invalid')}", 422), status_code=422)


def _error_body(request: Request, message: str, status: int) -> dict[str, Any]:
    if request.url.path in OPENAI_PATHS:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"error": message}


def _routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/healthz", summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/readyz", summary="Readiness: 200 once the model is loaded, 503 while loading or shutting down.")
    async def readyz() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready"})
        status = "draining" if state.draining else "failed" if state.failed else "loading"
        return JSONResponse({"status": status, **({"error": state.failed} if state.failed else {})}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics: requests by status, latency, batch sizes, queue depth.")
    async def metrics() -> Response:
        if state.batcher is not None:
            state.metrics.queue.set(state.batcher.depth)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/metadata", summary="The model: its inputs, labels and identity (run, weights sha256).")
    async def metadata() -> dict[str, Any]:
        model, batcher = state.require_model()
        if batcher is None:
            return describe_language_model(model)
        return {**describe(model), "batching": {k: getattr(state.settings, k) for k in ("max_batch", "max_wait_ms", "max_queue", "timeout_s")}}

    @app.post("/v1/predict", summary="Predict instances: labels and probabilities, or values.")
    async def predict(body: PredictRequest) -> dict[str, Any]:
        model, outputs = await state.infer(lambda m: m.encode(body.instances, state.settings.max_text_chars))
        return {"model": model.name, "predictions": model.decode(outputs)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(files("forgeml.serve").joinpath("playground.html").read_text(encoding="utf-8"))

