"""The server's front door, as plain ASGI middleware: bearer-token auth and the body-size limit.

It runs before any route, so a request without the token or with a body over the limit costs no
parsing: 401 or 413 with a JSON ``{"error": ...}``. The size limit is checked twice: against
Content-Length before reading, and while reading a chunked body (no Content-Length), whose bytes are
counted as they arrive.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable, Optional

from starlette.exceptions import HTTPException

OPEN_PATHS = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/")  # probes, and the playground's page itself

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server's limit of {limit:,} bytes")


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Optional[list[tuple[bytes, bytes]]] = None) -> None:
    payload = json.dumps(body).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


class Guard:
    """ASGI middleware: ``token`` (None: no auth) and ``max_body_bytes``."""

    def __init__(self, app: Any, token: Optional[str], max_body_bytes: int):
        self.app = app
        self.token = token.encode() if token else None
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.token is not None and scope.get("path") not in OPEN_PATHS and not self._authorised(headers.get(b"authorization", b"")):
            await send_json(send, 401, {"error": "missing or wrong bearer token: send Authorization: Bearer <token>"}, [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.limit
            except ValueError:
                await send_json(send, 400, {"error": "Content-Length is not a number"})
                return
            if too_large:
                await send_json(send, 413, {"error": BodyTooLarge(self.limit).detail})
                return
        await self.app(scope, self._counting(receive), send)

    def _authorised(self, header: bytes) -> bool:
        scheme, _, given = header.partition(b" ")
        # compare_digest takes as long whatever the first differing byte: no timing oracle
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token or b"")

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return counted
