"""OpenAI-compatible text generation for language models (forgeml GPT runs, pretrained causal LMs):

    GET  /v1/models
    POST /v1/completions         {"model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream"}
    POST /v1/chat/completions    {"model", "messages": [{"role", "content"}], ...}  (models with a chat template)

so the official ``openai`` client works with ``base_url="http://HOST:PORT/v1"``. With ``stream: true``
the answer is server-sent events, one chunk per piece of text as tokens are chosen, then ``[DONE]``.
Generation goes through the run's Predictor (``Predictor.stream``) or, with ``--backend onnx``, the
export bundle's ``LanguageRuntime`` (one cached ONNX step per token), one request at a time; a chat prompt is the model's own chat template rendered in a Jinja sandbox.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Optional, Union

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

MAX_STOPS = 4


@dataclass
class ServedLanguageModel:
    """A language model behind the OpenAI endpoints.

    Attributes:
        name: the model id clients send as ``model``.
        predictor: the run's Predictor, or an export bundle's ``LanguageRuntime`` (their ``stream`` generates).
        identity: the run and its weights' sha256.
        backend: torch or onnx.
    """

    name: str
    predictor: Any
    identity: dict[str, Any]
    backend: str = "torch"
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time on the model

    @property
    def chat(self) -> Optional[dict[str, Any]]:
        return getattr(self.predictor.features, "chat", None)

    @property
    def context(self) -> int:
        return int(self.predictor.features.context)

    def count(self, text: str) -> int:
        return len(self.predictor.features.encode(text)) if text else 0

    def render_chat(self, messages: list["ChatMessage"]) -> str:
        """The prompt of a conversation: the model's chat template with the generation prompt added."""
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        chat = self.chat
        if chat is None:
            raise HTTPException(400, f"model {self.name!r} has no chat template; continue a text with /v1/completions")

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = raise_exception
        try:
            return environment.from_string(chat["chat_template"]).render(
                messages=[m.model_dump() for m in messages], add_generation_prompt=True,
                bos_token=chat.get("bos_token") or "", eos_token=chat.get("eos_token") or "",
            )
        except TemplateError as exc:
            raise HTTPException(400, f"messages: the model's chat template refused them ({exc})") from None


def describe_language_model(model: ServedLanguageModel) -> dict[str, Any]:
    """What /v1/metadata answers for a language model."""
    return {
        "name": model.name, "task": "language_modelling", "backend": model.backend, "context": model.context,
        "vocab_size": int(model.predictor.features.vocab_size), "chat": model.chat is not None, "model": model.identity,
        "endpoints": ["/v1/completions", *(["/v1/chat/completions"] if model.chat is not None else []), "/v1/models"],
    }


class Sampling(BaseModel):
    """The generation settings both endpoints take (other OpenAI fields are accepted and unused)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="The model id (GET /v1/models).")
    max_tokens: Optional[int] = Field(16, ge=1, le=8192, description="Tokens to generate at most.")
    temperature: Optional[float] = Field(1.0, ge=0, le=2, description="0: greedy; higher: more varied.")
    top_p: Optional[float] = Field(1.0, gt=0, le=1, description="Nucleus sampling: draw from the most likely tokens holding this probability.")
    seed: Optional[int] = Field(None, description="The same seed and settings give the same text.")
    stop: Optional[Union[str, list[str]]] = Field(None, description="Up to 4 strings; the text ends before the first one generated.")
    stream: Optional[bool] = Field(False, description="Answer as server-sent events, piece by piece.")
    n: Optional[int] = Field(1, ge=1, le=1, description="Choices per request (1).")


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]] = Field(description="The text to continue (one).")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(description="system, user or assistant.")
    content: str = Field(description="The message's text.")


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")


def _stops(stop: Union[str, list[str], None]) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise HTTPException(400, f"stop: give up to {MAX_STOPS} non-empty strings")
    return stops


def pieces_until_stop(pieces: Iterator[tuple[str, int]], stops: list[str]) -> Iterator[tuple[str, int, bool]]:
    """Pieces of text cut before the first stop string: (piece, tokens so far, stopped). Text that
    could still be the start of a stop string is held back until the next piece decides."""
    held, emitted_tokens = "", 0
    hold = max((len(s) for s in stops), default=1) - 1
    for piece, tokens in pieces:
        held += piece
        emitted_tokens = tokens
        found = [held.index(s) for s in stops if s in held]
        if found:
            if held[: min(found)]:
                yield held[: min(found)], tokens, True
            else:
                yield "", tokens, True
            return
        if len(held) > hold:
            cut = len(held) - hold
            yield held[:cut], tokens, False
            held = held[cut:]
    if held:
        yield held, emitted_tokens, False


def add_openai_routes(app: FastAPI, state: Any) -> None:
    def language_model(requested: Optional[str] = None) -> ServedLanguageModel:
        model, _ = state.require_model()
        if not isinstance(model, ServedLanguageModel):
            raise HTTPException(400, f"model {model.name!r} is a {model.task} model: ask /v1/predict; /v1/completions is for language models")
        if requested is not None and requested != model.name:
            raise HTTPException(404, f"model {requested[:100]!r} does not exist; this server has {model.name!r}")
        return model

    @app.get("/v1/models", summary="OpenAI: the model this server generates with.")
    async def models() -> dict[str, Any]:
        model = language_model()
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "forgeml"}]}

    @app.post("/v1/completions", summary="OpenAI: continue a prompt.")
    async def completions(body: CompletionRequest) -> Any:
        model = language_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise HTTPException(400, "prompt: give one prompt per request")
        return await _answer(model, body, prompts[0], chat=False)

    @app.post("/v1/chat/completions", summary="OpenAI: the next message of a conversation (models with a chat template).")
    async def chat_completions(body: ChatRequest) -> Any:
        model = language_model(body.model)
        return await _answer(model, body, model.render_chat(body.messages), chat=True)

    async def _answer(model: ServedLanguageModel, body: Sampling, prompt: str, chat: bool) -> Any:
        if not prompt:
            raise HTTPException(400, "prompt: give at least one character")
        stops = _stops(body.stop)
        eos = (model.chat or {}).get("eos_id") if chat else None
        sampling = {"temperature": body.temperature if body.temperature is not None else 1.0, "top_p": body.top_p, "seed": body.seed, "eos_id": eos}
        events = _generate(model, prompt, body.max_tokens or 16, sampling, stops)
        ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        shape = _Shape(ident, created, model.name, chat)
        if body.stream:
            return StreamingResponse(shape.stream(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, tokens, reason = "", 0, "length"
        async for piece, count, finish in events:
            text += piece
            tokens = count
            reason = finish or reason
        return shape.whole(text, reason, {"prompt_tokens": model.count(prompt), "completion_tokens": tokens, "total_tokens": model.count(prompt) + tokens})

    async def _generate(model: ServedLanguageModel, prompt: str, max_tokens: int, sampling: dict[str, Any], stops: list[str]) -> AsyncIterator[tuple[str, int, Optional[str]]]:
        """(piece, tokens so far, finish reason or None) as the model thread produces them."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def work() -> None:
            try:
                with model.lock:
                    tokens, reason = 0, "length"
                    for piece, tokens, stopped in pieces_until_stop(model.predictor.stream(prompt, max_tokens, **sampling), stops):
                        if cancelled.is_set():
                            return
                        loop.call_soon_threadsafe(queue.put_nowait, (piece, tokens, None))
                        if stopped:
                            reason = "stop"
                    if sampling["eos_id"] is not None and tokens < max_tokens:
                        reason = "stop"
                    loop.call_soon_threadsafe(queue.put_nowait, ("", tokens, reason))
            except Exception as exc:  # noqa: BLE001 - handed to the request, which answers for it
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        if state.executor is not None:  # forgeml serve: the main thread, where torch runs fastest
            state.executor.submit(work)
        else:
            threading.Thread(target=work, daemon=True, name="forgeml-generate").start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise HTTPException(422, str(item).splitlines()[0] if str(item) else type(item).__name__)
                yield item
                if item[2] is not None:
                    return
        finally:
            cancelled.set()  # a client that went away stops the generation at its next token


@dataclass
class _Shape:
    """OpenAI's response shapes for one answer."""

    ident: str
    created: int
    model: str
    chat: bool

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def whole(self, text: str, reason: str, usage: dict[str, int]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        choice |= {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        return {**self._envelope([choice], chunk=False), "usage": usage}

    async def stream(self, events: AsyncIterator[tuple[str, int, Optional[str]]]) -> AsyncIterator[bytes]:
        if self.chat:
            yield self._event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}])
        try:
            async for piece, _, finish in events:
                if piece:
                    delta = {"delta": {"content": piece}} if self.chat else {"text": piece}
                    yield self._event([{"index": 0, **delta, "finish_reason": None, "logprobs": None}])
                if finish is not None:
                    end = {"delta": {}} if self.chat else {"text": ""}
                    yield self._event([{"index": 0, **end, "finish_reason": finish, "logprobs": None}])
        except HTTPException as exc:  # the stream has begun: the error is its last event
            yield b"data: " + json.dumps({"error": {"message": str(exc.detail), "type": "invalid_request_error"}}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    def _event(self, choices: list[dict[str, Any]]) -> bytes:
        return b"data: " + json.dumps(self._envelope(choices, chunk=True)).encode() + b"\n\n"
