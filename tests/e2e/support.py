"""Helpers shared by the end-to-end tests.

The CLI runner and the tiny config / CSV dataset builders come from tests/helpers.py. On top of them:

* ``forge``: ``run_cli`` with torch limited to one thread. The models here are tiny, so extra threads
  only add synchronisation; on a busy 2-core machine they make training several times slower. Runs
  being compared with each other always use the same setting.
* ``in_parallel``: run independent CLI calls side by side (each is one mostly single-threaded
  process, dominated by importing torch), to keep the whole e2e suite within its time budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from helpers import make_csv_dataset, run_cli, tiny_config  # tests/ is on sys.path (pyproject)

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
EXAMPLES = REPO / "examples"


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass
class TrainedRun:
    """A run trained once through the CLI: its config file, run directory and the train call's result."""

    config: Path
    path: Path
    result: subprocess.CompletedProcess
    overrides: tuple[str, ...]


def forge(*args: Any, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m forgeml ARGS`` (paths may be Path objects), torch on one thread."""
    return run_cli(*(str(a) for a in args), cwd=cwd, timeout=timeout, env=ONE_THREAD)


def popen_forge(*args: Any, stdout: Any, stderr: Any = subprocess.STDOUT, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``python -m forgeml ARGS`` without waiting (same environment as ``forge``)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD}
    return subprocess.Popen(
        [sys.executable, "-m", "forgeml", *(str(a) for a in args)],
        cwd=cwd or REPO,
        stdout=stdout,
        stderr=stderr,
        env=env,
        # A suite started in the background (`make test &`) passes SIGINT on as ignored, and Python
        # then keeps ignoring it; give the child Ctrl-C's default, as a terminal would.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def in_parallel(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run independent jobs (each usually one or a few CLI calls) side by side; their results by name."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def in_order(jobs: dict[str, Callable[[], Any]]) -> Callable[[], dict[str, Any]]:
    """One job of ``in_parallel`` that runs ``jobs`` one after the other: the calls that write to the
    same run directory, which holds one writer at a time (the second would be refused)."""
    return lambda: {name: job() for name, job in jobs.items()}


def in_parallel_groups(*groups: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each group's jobs in order, the groups side by side; all the results by name."""
    results: dict[str, Any] = {}
    for group in in_parallel({str(i): in_order(group) for i, group in enumerate(groups)}).values():
        results |= group
    return results


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_history(run: Path) -> list[dict[str, Any]]:
    """history.jsonl, every line parsed (a line that is not JSON fails the test)."""
    lines = (run / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def describe(result: subprocess.CompletedProcess) -> str:
    """What a failed assertion about a CLI call should show."""
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user error: exit 2, exactly one line on stderr starting with 'error:', no traceback.

    Returns that line; each of ``fragments`` must occur in it.
    """
    assert result.returncode == 2, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, describe(result)
    line = lines[0]
    assert line.startswith("error: "), describe(result)
    assert "Traceback" not in result.stderr + result.stdout, describe(result)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line
