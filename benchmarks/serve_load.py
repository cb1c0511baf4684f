"""Load on ``forgeml serve`` over loopback: batching on against ``--max-batch 1``, and against the
naive wrapper a user would write (a FastAPI endpoint calling ``Predictor.predict`` per request), all
in one run on the same model and machine.

    .venv/bin/python benchmarks/serve_load.py runs/sentiment_lstm            # a text classifier
    .venv/bin/python benchmarks/serve_load.py runs/sentiment_lstm --quick    # smoke run, seconds

Each server is a real process on a free loopback port. Clients are threads, each with its own
keep-alive connection, sending one review per request (distinct texts from the run's test split);
each level of concurrency (1, 8, 32, 128) runs for a bounded time and request count. It prints
requests/s and p50/p95/p99 latency per server and concurrency, the ratios the targets name, and the
server overhead at concurrency 1 against a bare ``Predictor.predict`` call in this process.
Client and servers share this machine's cores: the figures are for the whole box, not the server alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NAIVE = textwrap.dedent(
    '''
    import sys
    import forgeml
    from fastapi import FastAPI
    import uvicorn

    predictor = forgeml.load(sys.argv[1])
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(body: dict):
        column = predictor.features.columns[0]
        return {"predictions": predictor.predict([{column: text} for text in body["instances"]])}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
    '''
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("POST", "/v1/predict", body=json.dumps({"instances": ["warm up"]}), headers={"Content-Type": "application/json"})
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server {command} did not answer within 120 s")


def drive(port: int, texts: list[str], concurrency: int, seconds: float, limit: int) -> dict[str, Any]:
    """``concurrency`` threads sending single-review requests until ``seconds`` or ``limit`` requests."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    sent = [0]
    stop_at = time.perf_counter() + seconds

    def client(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = worker
        while time.perf_counter() < stop_at:
            with lock:
                if sent[0] >= limit:
                    return
                sent[0] += 1
            body = json.dumps({"instances": [texts[i % len(texts)]]})
            started = time.perf_counter()
            connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    latencies.append(elapsed)
            i += concurrency

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "concurrency": concurrency, "requests": int(sum(statuses.values())), "ok": len(latencies), "statuses": statuses,
        "rps": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
    }


def bare_predict_ms(run: Path, texts: list[str], repeats: int) -> float:
    import forgeml

    predictor = forgeml.load(run)
    column = predictor.features.columns[0]
    predictor.predict([{column: texts[0]}])
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        predictor.predict([{column: texts[i % len(texts)]}])
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a text classifier's run directory (e.g. runs/sentiment_lstm)")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per level (bounded)")
    parser.add_argument("--limit", type=int, default=5000, help="requests per level at most")
    parser.add_argument("--max-queue", type=int, default=100, help="forgeml serve's --max-queue")
    parser.add_argument("--quick", action="store_true", help="2 s per level, levels 1 and 8")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.levels = 2.0, "1,8"
    levels = [int(x) for x in args.levels.split(",")]

    import forgeml

    predictor = forgeml.load(args.run)
    column = predictor.features.columns[0]
    texts = [str(t) for t in predictor.split("test")[2].columns[column][:500]]
    del predictor
    naive_file = Path(os.environ.get("TMPDIR", "/tmp")) / "forgeml_naive_server.py"
    naive_file.write_text(NAIVE)
    servers = {
        "forgeml serve (batching)": ["--max-batch", "32", "--max-wait-ms", "5"],
        "forgeml serve --max-batch 1": ["--max-batch", "1"],
        "naive FastAPI + Predictor": None,
    }
    results: dict[str, list[dict[str, Any]]] = {}
    for name, options in servers.items():
        port = free_port()
        if options is None:
            command = [sys.executable, str(naive_file), str(args.run), str(port)]
        else:
            command = [sys.executable, "-m", "forgeml", "serve", str(args.run), "--port", str(port), "--max-queue", str(args.max_queue), *options]
        process = start(command, port)
        try:
            results[name] = [drive(port, texts, level, args.seconds, args.limit) for level in levels]
        finally:
            process.terminate()
            process.wait(60)
    bare = bare_predict_ms(args.run, texts, 200)
    report(results, levels, bare, args)


def report(results: dict[str, list[dict[str, Any]]], levels: list[int], bare_ms: float, args: argparse.Namespace) -> None:
    print(f"model: {args.run}; {args.seconds:g} s or {args.limit} requests per level; one review per request")
    print(f"{'server':32} {'conc':>5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  statuses")
    for name, rows in results.items():
        for row in rows:
            print(f"{name:32} {row['concurrency']:5d} {row['rps']:8.1f} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['p99_ms']:8.2f}  {row['statuses']}")
    by = {name: {r["concurrency"]: r for r in rows} for name, rows in results.items()}
    names = list(results)
    lines = []
    for level in levels:
        b, s, n = by[names[0]][level], by[names[1]][level], by[names[2]][level]
        lines.append(f"concurrency {level}: batching / max-batch 1 = {b['rps'] / max(s['rps'], 1e-9):.2f}x, forgeml / naive = {b['rps'] / max(n['rps'], 1e-9):.2f}x, p95 {b['p95_ms']:.1f} vs {s['p95_ms']:.1f} ms unbatched")
    overhead = by[names[0]][levels[0]]["p50_ms"] - bare_ms
    lines.append(f"bare Predictor.predict p50 {bare_ms:.2f} ms; forgeml serve at concurrency {levels[0]} p50 {by[names[0]][levels[0]]['p50_ms']:.2f} ms: overhead {overhead:.2f} ms")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "bare_predict_ms": bare_ms, "summary": lines}, indent=2))


if __name__ == "__main__":
    main()
