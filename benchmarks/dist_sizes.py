"""Run by benchmarks/runtime_edge.py inside .venv-runtime: the installed size of forgeml-runtime's
dependency closure, without and with its [text] extra, from each distribution's RECORD (the files
pip installed, byte for byte). Prints one JSON object."""

from __future__ import annotations

import json
import re
from importlib import metadata


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        if key(current) in seen:
            continue
        try:
            requirements = metadata.requires(current) or []
        except metadata.PackageNotFoundError:  # a requirement whose marker excludes this machine
            continue
        seen.add(key(current))
        for requirement in requirements:
            spec, _, marker = requirement.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", marker)
            if extra and extra.group(1) not in wanted:
                continue
            if not extra and marker.strip() and "python_version" not in marker and "platform" not in marker and "sys_platform" not in marker:
                continue
            todo.append((re.split(r"[ <>=!~\[(]", spec.strip())[0], ()))
    return seen


def megabytes(names: set[str]) -> float:
    total = sum(sum(f.size or 0 for f in dist.files or []) for dist in metadata.distributions() if key(dist.metadata["Name"]) in names)
    return total / 1e6


base, text = closure("forgeml-runtime"), closure("forgeml-runtime", ("text",))
print(json.dumps({"base_mb": megabytes(base), "text_mb": megabytes(text), "base": sorted(base), "extra": sorted(text - base)}))
