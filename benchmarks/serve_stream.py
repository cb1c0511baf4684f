"""Streaming generation through ``forgeml serve``: time to the first token and tokens per second
with the official ``openai`` client, against ``Predictor.generate`` in this process on the same
model, prompt and settings (greedy, so both produce the same tokens).

    .venv/bin/python benchmarks/serve_stream.py runs/gpt_kjv   # after forgeml train examples/gpt_kjv.yaml --out runs/gpt_kjv

The server runs as a real process on a loopback port (torch backend, and the ONNX bundle with
``--backend onnx`` when RUN/export exists). Each measurement is the median of ``--repeats`` calls.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROMPT = "And God said"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not get ready within 120 s")


def measure_server(run: Path, options: list[str], tokens: int, repeats: int) -> tuple[float, float, str]:
    import openai

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "forgeml", "serve", str(run), "--port", str(port), "--name", "m", *options], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_ready(port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        client.completions.create(model="m", prompt=PROMPT, max_tokens=4, temperature=0)  # warm up
        firsts, rates, text = [], [], ""
        for _ in range(repeats):
            started = time.perf_counter()
            first = None
            pieces = []
            for chunk in client.completions.create(model="m", prompt=PROMPT, max_tokens=tokens, temperature=0, stream=True):
                if first is None and chunk.choices[0].text:
                    first = time.perf_counter() - started
                pieces.append(chunk.choices[0].text)
            total = time.perf_counter() - started
            firsts.append(first or total)
            rates.append(tokens / total)
            text = "".join(pieces)
        return float(np.median(firsts)) * 1000, float(np.median(rates)), text
    finally:
        process.terminate()
        process.wait(60)


def measure_predictor(run: Path, tokens: int, repeats: int) -> tuple[float, str]:
    import forgeml

    predictor = forgeml.load(run)
    predictor.generate(PROMPT, 4, temperature=0)
    rates, text = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        text = predictor.generate(PROMPT, tokens, temperature=0)
        rates.append(tokens / (time.perf_counter() - started))
    return float(np.median(rates)), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rate, expected = measure_predictor(args.run, args.tokens, args.repeats)
    print(f"forgeml generate (Predictor, in process): {rate:,.0f} tokens/s")
    backends = [("torch", []), ("torch --threads 1", ["--threads", "1"])] + ([("onnx", ["--backend", "onnx"])] if (args.run / "export" / "export.json").is_file() else [])
    for name, options in backends:
        first_ms, served, text = measure_server(args.run, options, args.tokens, args.repeats)
        same = "same text" if text == expected else "a different text"
        print(f"forgeml serve --backend {name}: first token {first_ms:.1f} ms, {served:,.0f} tokens/s ({served / rate:.2f}x of generate; {same})")


if __name__ == "__main__":
    main()
