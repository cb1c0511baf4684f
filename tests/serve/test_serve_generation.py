"""forgeml serve for language models, driven by the official ``openai`` client over loopback: a GPT
run answers /v1/completions (streamed and whole) with the text ``forgeml generate`` gives, stop
strings cut it, its export bundle streams the same on ONNX Runtime, and a pretrained causal LM with a chat template answers /v1/chat/completions,
streamed and whole, stopping at its end of turn."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_LM_TEXT, make_tiny_causal_lm
from serve_support import Server

import forgeml
from forgeml.export import run as export

openai = pytest.importorskip("openai")  # a dev dependency: `make test` installs it

LINE = "the cat sat on the mat. the dog lay on the rug."


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_lm")
    (root / "corpus.txt").write_text("\n".join(LINE for _ in range(200)) + "\n")
    gpt = {
        "name": "tiny_gpt",
        "data": {"source": {"type": "text_files", "path": str(root / "corpus.txt")}, "corpus": {"column": "text", "tokenizer": "char"}, "split": {"validation": 0.1, "test": 0.1}},
        "model": {"type": "gpt", "layers": 1, "heads": 2, "dim": 32, "context": 24, "dropout": 0.0},
        "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": 16, "max_steps": 60, "epochs": 1000, "eval_every": 60, "log_every": 30},
    }
    (root / "chat.txt").write_text(TINY_LM_TEXT * 100)
    llama = {
        "name": "tiny_chat",
        "data": {"source": {"type": "text_files", "path": str(root / "chat.txt")}, "corpus": {"tokenizer": "pretrained"}, "split": {"validation": 0.1, "test": 0.1}},
        "model": {"type": "hf", "pretrained": str(make_tiny_causal_lm(root / "tiny_llama")), "context": 32},
        "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": 8, "max_steps": 4, "epochs": 100, "eval_every": 4, "log_every": 2, "monitor": "loss"},
    }
    runs = {"gpt": forgeml.train(gpt, out=root / "gpt", quiet=True).run_dir, "chat": forgeml.train(llama, out=root / "chat", quiet=True).run_dir}
    export(runs["gpt"], repeats=1, save=False)
    return runs


@pytest.fixture(scope="module")
def servers(runs: dict[str, Path]):
    started = {name: Server(run) for name, run in runs.items()}
    started["edge"] = Server(runs["gpt"], "--backend", "onnx", "--name", "edge-gpt")
    try:
        yield {name: server.wait_ready() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def client(server: Server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_completions_stream_and_whole_equal_forgeml_generate(servers: dict[str, Server], runs: dict[str, Path]):
    api = client(servers["gpt"])
    expected = forgeml.load(runs["gpt"]).generate("the cat", 30, temperature=0)
    assert len(expected) > 10
    whole = api.completions.create(model="gpt", prompt="the cat", max_tokens=30, temperature=0)
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 30 and whole.usage.prompt_tokens == 7 and whole.object == "text_completion"
    chunks = list(api.completions.create(model="gpt", prompt="the cat", max_tokens=30, temperature=0, stream=True))
    assert len(chunks) > 5 and "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"

    sampled = [api.completions.create(model="gpt", prompt="the", max_tokens=20, temperature=1.0, top_p=0.9, seed=s).choices[0].text for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] == forgeml.load(runs["gpt"]).generate("the", 20, temperature=1.0, top_p=0.9, seed=1)

    stop = expected[5:8]
    cut = api.completions.create(model="gpt", prompt="the cat", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == expected[: expected.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = list(api.completions.create(model="gpt", prompt="the cat", max_tokens=30, temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected[: expected.index(stop)]
    assert [m.id for m in api.models.list().data] == ["gpt"]


def test_the_onnx_backend_streams_the_same_greedy_text_from_the_bundle(servers: dict[str, Server], runs: dict[str, Path]):
    api = client(servers["edge"])
    expected = forgeml.load(runs["gpt"]).generate("the dog", 40, temperature=0)
    chunks = list(api.completions.create(model="edge-gpt", prompt="the dog", max_tokens=40, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert servers["edge"].get("/v1/metadata")[1]["backend"] == "onnx"


def test_language_model_errors_are_openai_errors(servers: dict[str, Server]):
    api = client(servers["gpt"])
    with pytest.raises(openai.NotFoundError, match="does not exist; this server has 'gpt'"):
        api.completions.create(model="gpt-4", prompt="the", max_tokens=5)
    with pytest.raises(openai.BadRequestError, match="has no chat template; continue a text with /v1/completions"):
        api.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        api.completions.create(model="gpt", prompt="the", temperature=5)
    status, body = servers["gpt"].post("/v1/predict", {"instances": ["the"]})
    assert status == 400 and "is a language model" in body["error"]
    assert servers["gpt"].get("/v1/metadata")[1]["task"] == "language_modelling"


def test_chat_completions_stream_and_whole_with_the_models_template(servers: dict[str, Server], runs: dict[str, Path]):
    api = client(servers["chat"])
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    predictor = forgeml.load(runs["chat"])
    prompt = "system: be brief<|endoftext|>user: the cat<|endoftext|>assistant:"
    eos = predictor.features.chat["eos_id"]
    expected = "".join(piece for piece, _ in predictor.stream(prompt, 12, temperature=0, eos_id=eos))
    whole = api.chat.completions.create(model="chat", messages=messages, max_tokens=12, temperature=0)
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.object == "chat.completion"
    chunks = list(api.chat.completions.create(model="chat", messages=messages, max_tokens=12, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
