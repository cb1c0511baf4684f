"""A real ``forgeml serve`` process on a free loopback port, and a small HTTP client for it (tests/serve)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from helpers import REPO

LISTENING = re.compile(r"on http://127\.0\.0\.1:(\d+)")


class Server:
    """``python -m forgeml serve TARGET --port 0 ARGS`` as a subprocess; ``url`` once it listens."""

    def __init__(self, target: Path, *args: str, token: Optional[str] = None):
        self.token = token
        self.process = subprocess.Popen(
            [sys.executable, "-m", "forgeml", "serve", str(target), "--port", "0", *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        )
        self.output: list[str] = []
        self.port: Optional[int] = None
        self._listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = LISTENING.search(line)
            if match and self.port is None:
                self.port = int(match.group(1))
                self._listening.set()
        self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> "Server":
        """Wait until it listens and /readyz says ready."""
        deadline = time.monotonic() + timeout
        self._listening.wait(timeout)
        assert self.port is not None, "".join(self.output)
        while time.monotonic() < deadline:
            status, _ = self.get("/readyz")
            if status == 200:
                return self
            assert self.process.poll() is None, "".join(self.output)
            time.sleep(0.05)
        raise AssertionError(f"not ready after {timeout} s: {''.join(self.output)}")

    def request(self, method: str, path: str, body: Any = None, headers: Optional[dict[str, str]] = None, raw: Optional[bytes] = None, timeout: float = 60) -> tuple[int, Any]:
        """(status, JSON body or text) of one request; the token is sent unless headers say otherwise."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        sent = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        sent.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={k: v for k, v in sent.items() if v is not None})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _body(response.read(), response.headers)
        except urllib.error.HTTPError as error:
            self.last_headers = dict(error.headers)
            return error.code, _body(error.read(), error.headers)

    def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return self.request("POST", path, body, **kwargs)

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def _body(data: bytes, headers: Any) -> Any:
    if "json" in (headers.get("Content-Type") or ""):
        return json.loads(data)
    return data.decode("utf-8", "replace")
