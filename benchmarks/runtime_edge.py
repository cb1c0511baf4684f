"""The edge runtime against the torch Predictor, and what installing it costs.

    make runtime && .venv/bin/python benchmarks/runtime_edge.py runs/mnist_cnn   # after forgeml export runs/mnist_cnn

1. Predictions per second at batch 1, end to end (a raw 28x28 image in, label and probabilities
   out): ``forgeml.runtime.load(RUN/export).predict`` against ``forgeml.load(RUN).predict``, both on
   one thread, alternating blocks (A B B A) in this process.
2. In the virtualenv that holds only forgeml-runtime and its declared dependencies
   (``.venv-runtime``, built by ``make runtime``): the installed size of the runtime's dependency
   closure, without and with the ``[text]`` extra (from the packages' own file records), the median
   time of ``import forgeml.runtime`` in a fresh interpreter, and that torch is not importable there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNTIME_PYTHON = REPO / ".venv-runtime" / "bin" / "python"


def per_second(predict, images: np.ndarray, seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predict(images[count % len(images)][None])
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0, help="per block")
    parser.add_argument("--pairs", type=int, default=2, help="A B B A pairs")
    args = parser.parse_args()

    import torch

    import forgeml
    import forgeml.runtime

    torch.set_num_threads(1)
    predictor = forgeml.load(args.run)
    edge = forgeml.runtime.load(args.run / "export", threads=1)
    images = predictor.split("test")[2].columns[predictor.features.columns[0]][:64, 0]  # N x H x W, the training scale
    assert [p["label"] for p in edge.predict(images)] == [p["label"] for p in predictor.predict(images)]
    rates: dict[str, list[float]] = {"runtime": [], "predictor": []}
    for pair in range(args.pairs):
        order = ["runtime", "predictor"] if pair % 2 == 0 else ["predictor", "runtime"]
        for name in order:
            rates[name].append(per_second(edge.predict if name == "runtime" else predictor.predict, images, args.seconds))
    runtime_rate, predictor_rate = float(np.median(rates["runtime"])), float(np.median(rates["predictor"]))
    print(f"batch 1, end to end, 1 thread: runtime {runtime_rate:,.0f}/s, Predictor {predictor_rate:,.0f}/s: {runtime_rate / predictor_rate:.2f}x")

    if not RUNTIME_PYTHON.exists():
        print("no .venv-runtime: run `make runtime` for the install size and import time")
        return
    torch_there = subprocess.run([str(RUNTIME_PYTHON), "-c", "import torch"], capture_output=True).returncode == 0
    sizes = json.loads(subprocess.run([str(RUNTIME_PYTHON), str(REPO / "benchmarks" / "dist_sizes.py")], capture_output=True, text=True, check=True).stdout)
    code = "import time; t = time.perf_counter(); import forgeml.runtime; print(time.perf_counter() - t)"
    imports = sorted(float(subprocess.run([str(RUNTIME_PYTHON), "-c", code], capture_output=True, text=True, cwd="/").stdout) for _ in range(7))
    print(f"forgeml-runtime installed: {sizes['base_mb']:,.0f} MB ({', '.join(sizes['base'])}); with [text] {sizes['text_mb']:,.0f} MB (+ {', '.join(sizes['extra'])})")
    print(f"import forgeml.runtime: {imports[3] * 1000:.0f} ms (median of 7 fresh interpreters); torch importable there: {torch_there}")


if __name__ == "__main__":
    main()
