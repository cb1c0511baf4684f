"""forgeml pipeline: every stage into one run; a second run skips each stage that is up to date;
a changed setting re-runs only its stage and the report; interrupted training is resumed; a failed
stage keeps what came before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, run_cli, tiny_config

from forgeml.errors import ConfigError, ForgeError, RunDirError
from forgeml.pipeline import run

pytestmark = pytest.mark.usefixtures("single_thread_torch")

STAGES = ["train", "evaluate", "calibrate", "explain", "attack", "audit", "export", "report"]


def pipeline_config(**pipeline: Any) -> dict[str, Any]:
    config = tiny_config(train={"epochs": 2, "batch_size": 32, "lr": 0.01, "log_every": 8})
    config["pipeline"] = {
        "stages": STAGES,
        "explain": {"n": 2, "faithfulness_n": 16, "faithfulness_methods": ["ig", "saliency"]},
        "attack": {"eps": [0.1, 0.2], "steps": 3, "n": 40},
        "audit": {"n": 60},
        "export": {"quantize": "none"},
    } | pipeline
    return config


def statuses(result: Any) -> dict[str, str]:
    return {s.name: s.status for s in result.stages}


def quiet(text: str) -> None:
    pass


def test_the_pipeline_runs_every_stage_then_skips_them(tmp_path: Path):
    out = tmp_path / "run"
    first = run(pipeline_config(), out=out, echo=quiet, quiet_training=True)
    assert [s.name for s in first.stages] == STAGES and set(statuses(first).values()) == {"ran"}
    for name in ("evaluate.json", "calibration.json", "explain.json", "attack.json", "audit.json", "export.json", "export/model.onnx", "report.html", "report.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record) == set(STAGES) - {"train"}
    assert "calibration.png" in record["calibrate"]["outputs"] and record["attack"]["summary"].startswith("clean ")
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == {} and report["export"]["rows"][1]["name"] == "onnxruntime fp32"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name != ".lock"}  # the lock records each writer

    again = run(pipeline_config(), out=out, echo=quiet, quiet_training=True)
    assert set(statuses(again).values()) == {"skipped"}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name != ".lock"} == stamps  # nothing rewritten

    # a changed attack re-runs the attack and the report only
    changed = run(pipeline_config(attack={"eps": [0.1], "steps": 3, "n": 40}), out=out, echo=quiet, quiet_training=True)
    assert [name for name, status in statuses(changed).items() if status == "ran"] == ["attack", "report"]
    assert [p["eps"] for p in json.loads((out / "attack.json").read_text())["pgd_linf"]["points"]] == [0.1]

    # a stage whose output was deleted or altered is run again
    (out / "audit_membership.png").unlink()
    (out / "calibration.json").write_text((out / "calibration.json").read_text().replace('"bins": 15', '"bins": 16'))
    with pytest.warns(UserWarning, match="calibration.json: corrupt .* its temperature is not applied"):
        repaired = run(pipeline_config(attack={"eps": [0.1], "steps": 3, "n": 40}), out=out, echo=quiet, quiet_training=True)
    assert [name for name, status in statuses(repaired).items() if status == "ran"] == ["calibrate", "audit", "report"]

    # the model's settings cannot change under an existing run
    with pytest.raises(RunDirError, match=r"different config \(train.lr\).*--overwrite"):
        run(pipeline_config() | {"train": {"epochs": 2, "batch_size": 32, "lr": 0.02, "log_every": 8}}, out=out, echo=quiet, quiet_training=True)


def test_interrupted_training_is_resumed_and_a_failed_stage_keeps_the_rest(tmp_path: Path):
    out = tmp_path / "run"
    broken = pipeline_config(stages=["train", "evaluate", "explain", "report"], explain={"n": 2, "method": "nonsense", "faithfulness": False})
    with pytest.raises(ForgeError, match="nonsense"):
        run(broken, out=out, echo=quiet, quiet_training=True)
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record) == {"evaluate"} and not (out / "report.html").exists()

    (out / "model.safetensors").unlink()  # as if training had stopped after its last checkpoint
    fixed = pipeline_config(stages=["train", "evaluate", "explain", "report"], explain={"n": 2, "faithfulness": False})
    lines: list[str] = []
    result = run(fixed, out=out, echo=lines.append, quiet_training=True)
    assert any("resuming the interrupted run" in line for line in lines)
    # the weights are the same as before, so the evaluation recorded then is still up to date
    assert statuses(result) == {"train": "ran", "evaluate": "skipped", "explain": "ran", "report": "ran"}


def test_stages_are_chosen_per_task():
    from forgeml.config import load_config
    from forgeml.pipeline import stages_for, task_of

    classifier = load_config(tiny_config())
    assert stages_for(classifier, task_of(classifier)) == ["train", "evaluate", "calibrate", "explain", "attack", "audit", "export", "report"]
    table = tiny_config(
        data={"source": {"type": "csv", "path": "x.csv"}, "features": [{"type": "number", "name": "a"}], "target": {"type": "number", "name": "y"}},
        model={"type": "mlp", "hidden": [4]},
    )
    regression = load_config(table)
    assert task_of(regression) == "regression" and stages_for(regression, "regression") == ["train", "evaluate", "audit", "export", "report"]
    with pytest.raises(ForgeError, match="calibrate, attack do not apply to a regression model"):
        stages_for(load_config(table | {"pipeline": ["train", "calibrate", "attack"]}), "regression")
    texts = load_config(REPO / "examples/sentiment_lstm.yaml")  # packed sequences: export cannot trace them
    assert "export" not in stages_for(texts, "classification") and "attack" in stages_for(texts, "classification")
    series = load_config(REPO / "examples/sunspots_gru.yaml")
    assert stages_for(series, task_of(series)) == ["train", "evaluate", "audit", "export", "report"]
    ordered = load_config(tiny_config() | {"pipeline": ["report", "train", "evaluate"]})
    assert stages_for(ordered, "classification") == ["train", "evaluate", "report"]
    with pytest.raises(ConfigError, match="pipeline"):
        load_config(tiny_config() | {"pipeline": ["train", "deploy"]})


def test_the_command_line_pipeline(tmp_path: Path):
    config = pipeline_config(stages=["train", "evaluate", "calibrate", "report"])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    first = run_cli("pipeline", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), env={"OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stderr
    assert "[4/4] report: done in" in first.stdout and f"{tmp_path / 'run'}: 4 stage(s) ran, 0 up to date" in first.stdout
    second = run_cli("pipeline", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), env={"OMP_NUM_THREADS": "1"})
    assert second.returncode == 0 and second.stdout.count("up to date, skipped") == 4
    changed = run_cli("pipeline", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), "--set", "train.lr=0.5")
    assert changed.returncode == 2 and changed.stderr.startswith("error: ") and "--overwrite" in changed.stderr
