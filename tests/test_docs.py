"""The guided pages in docs/ run as written.

Every fenced block whose info string is exactly ``bash runnable`` is executed: a page's blocks, in
order, form one bash script run in a fresh directory that holds only a link to ``examples/``. The
Chinese twins in docs/zh/ must carry the very same runnable blocks, so running the English pages
checks them too. Relative links between the pages must point to files that exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
ZH = DOCS / "zh"


FENCE = re.compile(r"^```(.*)$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def runnable_blocks(page: Path) -> list[str]:
    """The bodies of the page's ```bash runnable blocks, in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    inside = False
    for line in page.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(line)
        if not inside:
            if match:
                inside = True
                current = [] if match.group(1).strip() == "bash runnable" else None
        elif line.strip() == "```":
            inside = False
            if current is not None:
                blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def english_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def run_page(page: Path, directory: Path) -> tuple[int | None, str, str]:
    """Run a page's runnable blocks as one script in ``directory``: (exit code or None on timeout, stdout, stderr)."""
    blocks = runnable_blocks(page)
    (directory / "examples").symlink_to(REPO / "examples")
    script = "set -euo pipefail\n" + "\n".join(blocks) + "\n"
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO / "src")
    try:
        done = subprocess.run(["bash", "-c", script], cwd=directory, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as error:
        return None, _tail(error.stdout), _tail(error.stderr)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int | None, str, str]]:
    """Every page's blocks, two pages at a time: each command is one mostly single-threaded process
    (torch on one thread), so two of them use both cores and halve the wall time."""
    pages = english_pages()
    workers = max(1, min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        futures = {page.name: pool.submit(run_page, page, tmp_path_factory.mktemp(page.stem)) for page in pages}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("page", english_pages(), ids=lambda p: p.name)
def test_page_runs(page: Path, page_runs: dict[str, tuple[int | None, str, str]]) -> None:
    assert runnable_blocks(page), f"{page.name} has no ```bash runnable block"
    code, stdout, stderr = page_runs[page.name]
    if code is None:
        pytest.fail(f"{page.name}: runnable blocks took over 300 s\n{stdout}\n{stderr}")
    if code != 0:
        pytest.fail(f"{page.name}: exit code {code}\n--- stdout (tail)\n{_tail(stdout)}\n--- stderr (tail)\n{_tail(stderr)}")


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def test_chinese_pages_have_the_same_runnable_blocks() -> None:
    pages = english_pages()
    assert pages
    for page in pages:
        twin = ZH / page.name
        assert twin.is_file(), f"docs/zh/{page.name} is missing"
        assert runnable_blocks(twin) == runnable_blocks(page), (
            f"docs/zh/{page.name}: its runnable blocks differ from docs/{page.name}"
        )
    for twin in sorted(ZH.glob("*.md")):
        assert (DOCS / twin.name).is_file(), f"docs/zh/{twin.name} has no English page"


def test_relative_links_resolve() -> None:
    broken = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http:, https:, mailto: and in-page anchors
            path = target.split("#", 1)[0]
            if not path:
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)
