"""Progress display: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Shows epoch, step, loss, the monitored metric, throughput and ETA.

    Args:
        stream: where to write (stdout by default).
        live: a live bar (True), plain lines (False), or decide by whether the stream is a terminal.
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.total_steps, self.total_epochs = 0, 0
        self.live = self.stream.isatty() if live is None else live
        self.fields: dict[str, Any] = {"epoch": 1, "loss": "-", "metric": "-", "rate": "-"}
        self.start_time = time.perf_counter()
        self.start_step = 0
        self._bar: Any = None
        self._task: Any = None

    def start(self, step: int, total_steps: int, total_epochs: int) -> None:
        """Begin at ``step`` of ``total_steps`` (a resumed run starts past 0)."""
        self.total_steps, self.total_epochs = total_steps, total_epochs
        self.start_time, self.start_step = time.perf_counter(), step
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Bar(
                TextColumn("epoch {task.fields[epoch]}/" + str(self.total_epochs)),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("val {task.fields[metric]}"),
                TextColumn("{task.fields[rate]} ex/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total_steps, completed=step, **self.fields)

    def update(self, step: int, *, epoch: int, loss: float, rate: float) -> None:
        """Record a logged training step (called every log_every steps, not every step)."""
        self.fields.update(epoch=epoch, loss=f"{loss:.4f}", rate=f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}")  # a large model on a CPU: 0.27 ex/s, not 0
        if self._bar is not None:
            self._bar.update(self._task, completed=step, **self.fields)
        else:
            elapsed = time.perf_counter() - self.start_time
            done = step - self.start_step
            eta = elapsed / done * (self.total_steps - step) if done > 0 else 0.0
            parts = [
                f"epoch {epoch}/{self.total_epochs}",
                f"step {step}/{self.total_steps}",
                f"loss {self.fields['loss']}",
                f"{self.fields['rate']} ex/s",
                f"eta {_format_duration(eta)}",
            ]
            print("  ".join(p for p in parts if p), file=self.stream, flush=True)

    def evaluation(self, step: int, metric: str) -> None:
        """Show the latest validation result."""
        self.fields["metric"] = metric
        if self._bar is not None:
            self._bar.update(self._task, completed=step, **self.fields)
        else:
            print(f"step {step}/{self.total_steps}  validation {metric}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
