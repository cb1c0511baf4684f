"""The settings of ``forgeml serve``: one definition of each knob, its default and its help text,
from which the command line's options are built."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forgeml.errors import ConfigError

UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str | int) -> int:
    """Bytes from ``10MiB``, ``512kB``, ``1000`` (binary and decimal units)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError(f"{text!r} is not a size such as 10MiB, 512kB or 1000")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


class ServeSettings(BaseModel):
    """How ``forgeml serve`` runs: where it listens, which backend runs the model, and its limits."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="A run directory (forgeml train) or an export bundle (forgeml export).")
    host: str = Field("127.0.0.1", description="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free port, printed at start).")
    backend: Optional[Literal["torch", "onnx"]] = Field(
        None, description="torch (the run's Predictor) or onnx (the export bundle, ONNX Runtime); default: torch for a run, onnx for a bundle."
    )
    name: Optional[str] = Field(None, description="The model's name in /v2 URLs and responses (default: the run directory's name).")
    max_batch: int = Field(16, ge=1, le=4096, description="Most rows one model call runs: concurrent requests are gathered up to it.")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="Longest a request waits for others to join its batch (a request alone runs at once).")
    max_queue: int = Field(100, ge=1, description="Requests that may wait for the model; one more is answered 429 with Retry-After at once.")
    max_body_bytes: int = Field(10 * 1024**2, ge=1, description="Largest request body (e.g. 10MiB); a larger one is answered 413.")
    max_text_chars: int = Field(100_000, ge=1, description="Longest text one instance may hold; a longer one is answered 422.")
    timeout_s: float = Field(30.0, gt=0, description="Longest a request waits for its result (queue and model call); then 504.")
    token_file: Optional[Path] = Field(None, description="A file holding a bearer token; every endpoint but the health probes then requires it.")
    workers: int = Field(1, ge=1, le=64, description="Server processes, each with its own copy of the model.")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads of each model call (default: the library's own choice).")

    @field_validator("max_body_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        return parse_size(value)  # type: ignore[arg-type]

    def token(self) -> Optional[str]:
        """The bearer token from ``token_file`` (surrounding whitespace removed), or None."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {self.token_file}: cannot be read ({type(exc).__name__})") from None
        if len(token) < 16:
            raise ConfigError(f"--token-file {self.token_file}: the token must be at least 16 characters")
        return token
