"""forgeml serve as real uvicorn processes on loopback ports, over real HTTP: an image classifier
(torch, with a token and a body limit), a text classifier (its ONNX bundle), a regressor and a
server with a tiny queue and timeout. Each answers what forgeml predict answers, through /v1 and
the Open Inference Protocol; every bad request is a 4xx naming the field; concurrent requests are
batched and each gets its own result; SIGTERM lets an accepted request finish and exits 0."""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import REPO, diverged_copy, line_data, run_cli, tiny_config, write_reviews
from PIL import Image
from serve_support import Server

import forgeml
from forgeml.export import run as export

pytestmark = pytest.mark.usefixtures("single_thread_torch")

TOKEN = "s3cret-token-for-tests-0123456789"
STEPS = {"epochs": 1, "max_steps": 4, "batch_size": 16}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def runs(root: Path) -> dict[str, Path]:
    write_reviews(root / "reviews.csv", rows=120)
    reviews = {
        "source": {"type": "csv", "path": str(root / "reviews.csv")},
        "features": [{"type": "text", "name": "text", "tokenizer": "word", "max_length": 16}],
        "target": {"type": "category", "name": "label"},
        "split": {"validation": 0.2, "test": 0.3},
    }
    line = line_data()
    out = {
        "cnn": forgeml.train(tiny_config(), out=root / "cnn", quiet=True).run_dir,
        "text": forgeml.train(tiny_config(data=reviews, model={"type": "textcnn", "embedding_dim": 8, "filters": 8, "kernels": [2, 3]}, train=STEPS), out=root / "text", quiet=True).run_dir,
        "line": forgeml.train(tiny_config(data=line, model={"type": "linear"}, train={**STEPS, "max_steps": 40, "lr": 0.1}), out=root / "line", quiet=True).run_dir,
    }
    export(out["text"], repeats=1, save=False)
    return out


@pytest.fixture(scope="module")
def servers(runs: dict[str, Path], root: Path):
    """The four servers, started together (each imports torch and loads its model in a few seconds)."""
    (root / "token").write_text(TOKEN + "\n")
    started = {
        "image": Server(runs["cnn"], "--token-file", str(root / "token"), "--max-body-bytes", "64KiB", "--max-batch", "8", "--max-wait-ms", "20", token=TOKEN),
        "text": Server(runs["text"] / "export", "--max-text-chars", "200"),
        "line": Server(runs["line"], "--backend", "torch"),
        "busy": Server(runs["cnn"], "--max-queue", "1", "--timeout-s", "0.05", "--max-batch", "4096", "--max-body-bytes", "200MiB"),
        "diverged": Server(diverged_copy(runs["cnn"], root / "diverged")),
    }
    try:
        yield {name: server.wait_ready() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def digit_pngs(run: Path, directory: Path, count: int) -> list[Path]:
    """PNG files of the run's first test digits (distinct images)."""
    images = forgeml.load(run).split("test")[2].columns["image"][:count, 0]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8), mode="L").save(directory / f"{i}.png")
        paths.append(directory / f"{i}.png")
    return paths


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def same(got: list[dict], expected: list[dict]) -> bool:
    if len(got) != len(expected):
        return False
    for a, b in zip(got, expected):
        if "label" in b:
            if a["label"] != b["label"] or max(abs(a["probabilities"][k] - p) for k, p in b["probabilities"].items()) > 1e-5:
                return False
        elif abs(a["value"] - b["value"]) > 1e-4 * max(1.0, abs(b["value"])):
            return False
    return True


def test_an_image_classifier_answers_as_forgeml_predict(servers: dict[str, Server], runs: dict[str, Path], root: Path):
    server, pngs = servers["image"], digit_pngs(runs["cnn"], root / "pngs", 6)
    expected = forgeml.load(runs["cnn"]).predict([str(p) for p in pngs])
    status, body = server.post("/v1/predict", {"instances": [{"image": b64(p)} for p in pngs[:3]] + [b64(p) for p in pngs[3:]]})
    assert status == 200 and body["model"] == "cnn" and same(body["predictions"], expected)

    status, meta = server.get("/v1/metadata")
    manifest = json.loads((runs["cnn"] / "manifest.json").read_text())
    assert status == 200 and meta["inputs"] == [{"name": "image", "type": "image"}] and meta["label_names"] == [str(i) for i in range(10)]
    assert meta["model"] == {"run": str(runs["cnn"].resolve()), "model_sha256": manifest["files"]["model.safetensors"]} and meta["backend"] == "torch"

    # the Open Inference Protocol, as a stock v2 client writes it: raw images as BYTES, or the encoded tensor
    status, v2meta = server.get("/v2/models/cnn")
    assert status == 200 and v2meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert v2meta["parameters"]["encoded_input"] == {"name": "inputs", "datatype": "FP32", "shape": [-1, 1, 8, 8]}
    request = {"id": "r1", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(pngs[0]), b64(pngs[1])]}]}
    status, answer = server.post("/v2/models/cnn/infer", request)
    assert status == 200 and answer["id"] == "r1" and answer["model_name"] == "cnn"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"] == {"name": "label", "shape": [2], "datatype": "BYTES", "data": [e["label"] for e in expected[:2]]}
    assert outputs["probabilities"]["shape"] == [2, 10] and outputs["outputs"]["datatype"] == "FP32"
    encoded = forgeml.load(runs["cnn"]).features.encode_inputs(forgeml.load(runs["cnn"]).parse(forgeml.load(runs["cnn"]).to_table([str(p) for p in pngs[:2]])))
    tensor = {"inputs": [{"name": "inputs", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": encoded.tolist()}], "outputs": [{"name": "label"}]}
    status, answer = server.post("/v2/models/cnn/versions/1/infer", tensor)
    assert status == 200 and answer["outputs"] == [outputs["label"]]
    assert server.get("/v2/models/cnn/ready") == (200, {"name": "cnn", "ready": True})
    assert server.get("/v2/health/ready") == (200, {"ready": True}) and server.get("/v2")[1]["name"] == "forgeml"
    status, body = server.post("/v2/models/resnet/infer", request)
    assert status == 404 and body == {"error": "unknown model 'resnet'; this server has 'cnn'"}


def test_every_endpoint_but_the_probes_needs_the_token(servers: dict[str, Server]):
    server = servers["image"]
    for path in ("/v1/metadata", "/metrics", "/openapi.json", "/v2/models/cnn", "/docs"):
        assert server.get(path, headers={"Authorization": None})[0] == 401, path
        assert server.get(path, headers={"Authorization": "Bearer wrong-token-of-some-length"})[0] == 401, path
        assert server.get(path, headers={"Authorization": TOKEN})[0] == 401, path  # no scheme
    status, body = server.post("/v1/predict", {"instances": ["x"]}, headers={"Authorization": None})
    assert status == 401 and body["error"].startswith("missing or wrong bearer token")
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert server.get(path, headers={"Authorization": None})[0] == 200, path
    assert server.get("/metrics")[0] == 200


def test_a_body_over_the_limit_is_413_declared_or_chunked(servers: dict[str, Server]):
    server = servers["image"]
    status, body = server.post("/v1/predict", raw=b'{"instances": ["' + b"A" * 70_000 + b'"]}')
    assert status == 413 and body == {"error": "the request body is larger than this server's limit of 65,536 bytes"}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = iter([b'{"instances": ["'] + [b"A" * 8192] * 10 + [b'"]}'])
    connection.request("POST", "/v1/predict", body=chunks, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"].startswith("the request body is larger")
    connection.close()
    assert server.get("/healthz")[0] == 200


BAD_REQUESTS = [
    ({"instances": []}, "instances: List should have at least 1 item"),
    ({"instances": "seven"}, "instances: Input should be a valid list"),
    ({"rows": []}, "instances: Field required"),
    ({"instances": [{"picture": "AAAA"}]}, "instances[0]: missing field 'image'"),
    ({"instances": [{"image": "AAAA", "extra": 1}]}, "instances[0]: unknown field 'extra'"),
    ({"instances": [{"image": "not base64!"}]}, "instances[0].image: not valid base64"),
    ({"instances": [{"image": 7}]}, "instances[0].image: give the image file's bytes as a base64 string"),
    ({"instances": [{"image": base64.b64encode(b"hello, not an image").decode()}]}, "instances[0]: column 'image': cannot decode image bytes"),
]
BAD_V2 = [
    ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["AAAA"]}]}, "inputs[0].data: 1 values for shape [2] (2 values)"),
    ({"inputs": [{"name": "inputs", "shape": [1, 1, 8], "datatype": "FP32", "data": [0.0] * 8}]}, "inputs[0].shape: the encoded input is [N, 1, 8, 8]; got [1, 1, 8]"),
    ({"inputs": [{"name": "inputs", "shape": [1, 1, 8, 8], "datatype": "BYTES", "data": ["a"] * 64}]}, "inputs[0].datatype: the encoded input is FP32, not BYTES"),
    ({"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}, "inputs: unknown input 'pixels'; this model takes image"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}, "inputs.0.data: Field required"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.5]}]}, "instances[0].image: give the image file's bytes as a base64 string"),
]


def test_bad_requests_are_4xx_that_name_the_field(servers: dict[str, Server]):
    server = servers["image"]
    for body, message in BAD_REQUESTS:
        status, answer = server.post("/v1/predict", body)
        assert status == 422 and message in answer["error"], (body, answer)
    for body, message in BAD_V2:
        status, answer = server.post("/v2/models/cnn/infer", body)
        assert 400 <= status < 500 and message in answer["error"], (body, answer)
    status, answer = server.post("/v1/predict", raw=b'{"instances": [')
    assert status == 422 and "JSON decode error" in answer["error"]
    status, answer = server.post("/v1/predict", raw=b"[" * 100_000 + b"]" * 100_000)  # nesting beyond any parser's depth
    assert 400 <= status < 500
    assert server.get("/healthz")[0] == 200


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(servers: dict[str, Server], runs: dict[str, Path], root: Path):
    server, pngs = servers["image"], digit_pngs(runs["cnn"], root / "many", 48)
    expected = forgeml.load(runs["cnn"]).predict([str(p) for p in pngs])
    assert len({e["label"] for e in expected}) > 1  # distinct answers: a mix-up would show

    def ask(i: int) -> tuple[int, Any]:
        return server.post("/v1/predict", {"instances": [b64(pngs[i])]})

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, range(len(pngs))))
    assert all(status == 200 for status, _ in answers)
    assert all(same(body["predictions"], [expected[i]]) for i, (_, body) in enumerate(answers))
    text = server.get("/metrics")[1]
    calls = float(re.search(r"^forgeml_batch_size_count (\S+)$", text, re.M).group(1))
    rows = float(re.search(r"^forgeml_batch_size_sum (\S+)$", text, re.M).group(1))
    assert rows / calls > 1.2, text  # several requests shared a model call
    assert re.search(r'^forgeml_requests_total\{endpoint="/v1/predict",status="200"\} (\d+)', text, re.M)
    assert "forgeml_request_seconds_bucket" in text and "forgeml_queue_depth" in text


def test_a_text_bundle_on_onnx_runtime(servers: dict[str, Server], runs: dict[str, Path]):
    server = servers["text"]
    texts = ["a great and clever film", "dull, boring and flat", "the plot was really quite charming"]
    expected = forgeml.load(runs["text"]).predict([{"text": t} for t in texts])
    status, body = server.post("/v1/predict", {"instances": texts})
    assert status == 200 and same(body["predictions"], expected)
    assert server.get("/v1/metadata")[1]["backend"] == "onnx"
    status, answer = server.post("/v2/models/text/infer", {"inputs": [{"name": "text", "shape": [3, 1], "datatype": "BYTES", "data": [[t] for t in texts]}]})
    assert status == 200 and next(o for o in answer["outputs"] if o["name"] == "label")["data"] == [e["label"] for e in expected]
    status, answer = server.post("/v1/predict", {"instances": ["word " * 50]})
    assert status == 422 and answer["error"] == "instances[0].text: the text has 250 characters; this server takes at most 200"
    assert server.post("/v1/predict", {"instances": [""]}) == (422, {"error": "instances[0]: column 'text': missing text"})
    status, answer = server.post("/v2/models/text/infer", {"inputs": [{"name": "inputs", "shape": [1, 16], "datatype": "INT64", "data": [10**6] * 16}]})
    assert status == 422 and "token ids must lie in [0," in answer["error"]


def test_a_regressor_answers_values_in_the_targets_units(servers: dict[str, Server], runs: dict[str, Path]):
    server = servers["line"]
    expected = forgeml.load(runs["line"]).predict([{"x": 0.5}, {"x": -1.25}])
    status, body = server.post("/v1/predict", {"instances": [{"x": 0.5}, -1.25]})
    assert status == 200 and same(body["predictions"], expected) and abs(expected[0]["value"] - 2.5) < 1.0
    status, answer = server.post("/v2/models/line/infer", {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [0.5, -1.25]}]})
    assert status == 200 and next(o for o in answer["outputs"] if o["name"] == "value")["data"] == pytest.approx([e["value"] for e in expected], rel=1e-5)
    assert server.post("/v1/predict", {"instances": [{"x": "tall"}]})[0] == 422
    assert server.post("/v1/predict", {"instances": [{"x": True}]}) == (422, {"error": "instances[0].x: give a number"})


def test_a_full_queue_is_429_at_once_and_a_slow_call_is_504(servers: dict[str, Server], runs: dict[str, Path], root: Path):
    server = servers["busy"]
    image = b64(digit_pngs(runs["cnn"], root / "busy", 1)[0])
    heavy = {"instances": [image] * 3000}

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: server.post("/v1/predict", heavy), range(12)))
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 429, 504} and 429 in statuses, statuses
    refused = next(body for status, body in answers if status == 429)
    assert refused == {"error": "the server is busy (1 requests waiting); retry shortly"}
    for _ in range(40):  # a request admitted above may still be encoding its 3,000 images: 429 says retry shortly
        status, body = server.post("/v1/predict", {"instances": [image] * 3000})
        if status != 429:
            break
        time.sleep(0.25)
    assert status == 504 and body == {"error": "no result within the server's timeout of 0.05 s"}
    assert server.get("/readyz")[0] == 200 and server.post("/v1/predict", {"instances": [image]})[0] in (200, 504)


def test_sigterm_finishes_the_accepted_request_and_exits_0(runs: dict[str, Path]):
    server = Server(runs["line"]).wait_ready()
    result: dict[str, Any] = {}
    big = {"inputs": [{"name": "x", "shape": [400_000], "datatype": "FP64", "data": [0.5] * 400_000}]}

    def ask() -> None:
        result["answer"] = server.post("/v2/models/line/infer", big, timeout=120)

    worker = threading.Thread(target=ask)
    worker.start()
    time.sleep(1.0)  # sent and being encoded (400,000 rows take a few seconds)
    code = server.terminate()
    worker.join(120)
    status, answer = result["answer"]
    assert status == 200 and len(next(o for o in answer["outputs"] if o["name"] == "value")["data"]) == 400_000
    assert code == 0, "".join(server.output)


def test_the_openapi_document_is_fuzzed_without_a_5xx(servers: dict[str, Server], root: Path):
    server = servers["text"]
    schemathesis = Path(shutil.which("schemathesis") or (Path(REPO) / ".venv" / "bin" / "schemathesis"))
    result = subprocess.run(
        [str(schemathesis), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "1",
         "--generation-database", "none", "--no-color"],
        capture_output=True, text=True, timeout=300, cwd=root,  # its own files stay out of the repository
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert server.get("/healthz")[0] == 200


def test_the_playground_predicts_in_headless_chromium(servers: dict[str, Server], runs: dict[str, Path], root: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (make browser installs it)"
    server = servers["text"]
    expected = forgeml.load(runs["text"]).predict([{"text": "a great and clever film"}])[0]
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={root / 'chromium'}", "--virtual-time-budget=15000",
         "--dump-dom", f"{server.url}/#text=a%20great%20and%20clever%20film"],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert f'<div id="label">{expected["label"]}</div>' in dom, dom[-3000:]
    shown = [float(p) for p in re.findall(r'<span class="probability">([0-9.]+)</span>', dom)]
    assert shown and abs(shown[0] - max(expected["probabilities"].values())) < 1e-3

    # an image, on the server that needs a token: a digit whose base64 has a "+" (a URL reads it as a space)
    pngs = digit_pngs(runs["cnn"], root / "playground", 40)
    png = next(p for p in pngs if "+" in b64(p))
    label = forgeml.load(runs["cnn"]).predict([str(png)])[0]["label"]
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={root / 'chromium'}", "--virtual-time-budget=15000",
         "--dump-dom", f"{servers['image'].url}/#token={TOKEN}&image={b64(png)}"],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert f'<div id="label">{label}</div>' in dom and 'class="error"></div>' in dom, dom[-3000:]


def test_a_model_whose_outputs_are_nan_answers_422_not_a_5xx(servers: dict[str, Server], runs: dict[str, Path], root: Path):
    server = servers["diverged"]
    image = b64(digit_pngs(runs["cnn"], root / "diverged_pngs", 1)[0])
    for path, body in [
        ("/v1/predict", {"instances": [{"image": image}]}),
        ("/v2/models/diverged/infer", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}]}),
    ]:
        status, answer = server.post(path, body)
        assert status == 422, answer
        assert answer["error"] == "the model's outputs for these instances are not finite numbers (nan or inf), so there is no prediction"
    assert server.get("/readyz")[0] == 200  # and it keeps serving


def test_serve_refuses_a_bad_target_or_option_in_one_line(root: Path, runs: dict[str, Path]):
    for args, message in [
        ((str(root / "nothing"),), "no such run directory or export bundle"),
        ((str(runs["cnn"]), "--backend", "onnx"), "has no export bundle: run forgeml export"),
        ((str(runs["cnn"]), "--max-body-bytes", "lots"), "--max-body-bytes: 'lots' is not a size"),
        ((str(runs["cnn"]), "--token-file", str(root / "missing-token")), "--token-file"),
    ]:
        result = run_cli("serve", *args, "--workers", "2", timeout=120)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, (args, result.stderr)
