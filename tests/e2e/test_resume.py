"""Kill a training run with SIGKILL, resume it, and end bit for bit where an uninterrupted run ends.

One module fixture does all the work, in two phases of side-by-side CLI calls:

1. an uninterrupted run of CONFIG (max_steps 1500) || a run of CONFIG with --set train.max_steps=100000,
   SIGKILLed once checkpoints/latest names a step >= 300 (it cannot finish first: no race) || another
   such run interrupted with SIGINT (Ctrl-C) after its first checkpoint || one stopped with SIGTERM
   there || the same through forgeml pipeline; the killed run directory is then copied twice, and
   given the temporary files and folders a kill in the middle of writes leaves;
2. ``--resume`` of the killed run (without the --set: max_steps goes back to 1500, a change resume
   allows), which must remove them || the same on a copy whose newest checkpoint is truncated || a
   resume of the other copy with --set train.lr=0.5, which must be refused.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from forgeml.run import RunDir

from .support import TrainedRun, assert_user_error, describe, forge, in_parallel, popen_forge, read_history, read_json, sha256, write_yaml

MAX_STEPS = 1500
KILL_AT = 300
CHECKPOINT_EVERY = 50
LOG_EVERY = 30  # not a divisor of CHECKPOINT_EVERY: a checkpoint falls between two log lines

CONFIG = {
    "name": "resume",
    "seed": 0,
    "data": {"source": {"type": "builtin", "name": "digits"}, "split": {"validation": 0.1, "test": 0.1}},
    "model": {"type": "mlp", "hidden": [32], "dropout": 0.1},  # dropout: the torch RNG state matters too
    "train": {
        "epochs": 1000,  # max_steps decides
        "max_steps": MAX_STEPS,
        "batch_size": 16,  # 90 batches per epoch: checkpoints fall in the middle of epochs
        "lr": 0.003,
        "log_every": LOG_EVERY,
        "checkpoint_every": CHECKPOINT_EVERY,
    },
}


def latest_step(run: Path) -> int:
    try:
        return int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
    except (OSError, ValueError):
        return -1


def train_and_signal(
    config: Path, run: Path, log: Path, sig: int, at_step: int, timeout: float = 240, command: str = "train"
) -> dict[str, Any]:
    """Start training (``forgeml COMMAND``), send ``sig`` once a checkpoint at step >= ``at_step`` is
    complete; what was seen."""
    with log.open("w") as output, log.with_suffix(".err").open("w") as errors:
        process = popen_forge(command, config, "--out", run, "--set", "train.max_steps=100000", stdout=output, stderr=errors)
        deadline = time.monotonic() + timeout
        try:
            while latest_step(run) < at_step and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if process.poll() is None:
                process.send_signal(sig)
            returncode = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return {
        "returncode": returncode,
        "output": log.read_text(),
        "stderr": log.with_suffix(".err").read_text(),
        "step": latest_step(run),
        "files": sorted(p.name for p in run.iterdir()) if run.is_dir() else [],
        "checkpoints": sorted(p.name for p in (run / "checkpoints").glob("step-*")),
        "config": yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None,
    }


@pytest.fixture(scope="module")
def resume(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("resume")
    config = write_yaml(root / "resume.yaml", CONFIG)
    names = ("full", "killed", "interrupted", "truncated", "changed", "terminated")  # terminated: by SIGTERM
    full, killed, interrupted, truncated, changed, terminated = (root / name for name in names)

    phase1 = in_parallel(
        {
            "full": lambda: forge("train", config, "--out", full),
            "kill": lambda: train_and_signal(config, killed, root / "killed.log", signal.SIGKILL, KILL_AT),
            "interrupt": lambda: train_and_signal(config, interrupted, root / "interrupted.log", signal.SIGINT, CHECKPOINT_EVERY),
            "terminate": lambda: train_and_signal(config, terminated, root / "terminated.log", signal.SIGTERM, CHECKPOINT_EVERY),
            "pipeline": lambda: train_and_signal(
                config, root / "pipeline", root / "pipeline.log", signal.SIGTERM, CHECKPOINT_EVERY, command="pipeline"
            ),
        }
    )
    kill = phase1["kill"]
    if kill["returncode"] != -signal.SIGKILL:
        pytest.fail(f"the run to kill ended by itself (exit {kill['returncode']}):\n{kill['output'][-3000:]}")

    shutil.copytree(killed, truncated)
    shutil.copytree(killed, changed)
    newest = (truncated / "checkpoints" / "latest").read_text().strip()
    weights = truncated / "checkpoints" / newest / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    previous = max(name for name in kill["checkpoints"] if name < newest)
    changed_before = {p.name: sha256(p) for p in changed.iterdir() if p.is_file() and p.name != ".lock"}  # the lock records each writer
    warnings: list[str] = []
    kept = RunDir(terminated).load_checkpoint(warn=warnings.append) if terminated.is_dir() else None
    leftovers = plant_leftovers(killed)

    phase2 = in_parallel(
        {
            "resumed": lambda: forge("train", config, "--resume", killed),
            "truncated": lambda: forge("train", config, "--resume", truncated),
            "changed": lambda: forge("train", config, "--resume", changed, "--set", "train.lr=0.5"),
        }
    )
    return {
        "root": root,
        "full": TrainedRun(config, full, phase1["full"], ()),
        "kill": kill,
        "killed": killed,
        "interrupt": phase1["interrupt"],
        "interrupted": interrupted,
        "truncated": truncated,
        "changed": changed,
        "newest": newest,
        "previous": previous,
        "changed_before": changed_before,
        "terminate": phase1["terminate"],
        "pipeline": phase1["pipeline"],
        "pipeline_run": root / "pipeline",
        "terminated": terminated,
        "terminated_kept": (kept[0] if kept else None, warnings),
        "leftovers": leftovers,
        **{f"{name}_result": result for name, result in phase2.items()},
    }


# what SIGKILL in the middle of writes leaves (the names forgeml's atomic writes give): a checkpoint
# being staged, with a file still under its temporary name, and the final weights and checkpoints/latest
# being written; and a file of the user's that only looks temporary
LEFTOVERS = {
    "checkpoints/.step-000999.k2j3h4g5/model.safetensors": b"half",
    "checkpoints/.step-000999.k2j3h4g5/.optimizer.safetensors.a1b2c3d4.tmp": b"half",
    "checkpoints/.latest.z1x2c3v_.tmp": b"step-0003",
    ".model.safetensors.q9w8e7r6.tmp": b"half",
}
USER_FILE = ".my-notes.tmp"


def plant_leftovers(run: Path) -> list[str]:
    for name, data in {**LEFTOVERS, USER_FILE: b"mine"}.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)
    return [".model.safetensors.q9w8e7r6.tmp", "checkpoints/.latest.z1x2c3v_.tmp", "checkpoints/.step-000999.k2j3h4g5"]


def hidden_entries(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".") and p.name != ".lock")


def assert_same_weights(run: Path, reference: Path) -> None:
    ours, theirs = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"tensors differ from the uninterrupted run: {different}"


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "examples_per_s"} for r in records]  # a timing


def assert_same_history(run: Path, reference: Path) -> None:
    records = read_history(run)
    keys = [(r["split"], r["step"]) for r in records]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicated, f"history.jsonl repeats {duplicated}"
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))
    assert comparable(records) == comparable(read_history(reference)), "the resumed run logged other values"


def test_uninterrupted_run(resume: dict[str, Any]) -> None:
    full = resume["full"]
    assert full.result.returncode == 0, describe(full.result)
    assert read_json(full.path / "metrics.json")["training"]["steps"] == MAX_STEPS


def test_sigkill_leaves_checkpoints_but_no_final_model(resume: dict[str, Any]) -> None:
    kill = resume["kill"]
    assert kill["returncode"] == -signal.SIGKILL
    assert KILL_AT <= kill["step"] < MAX_STEPS - 2 * CHECKPOINT_EVERY, kill["step"]
    assert "model.safetensors" not in kill["files"] and "metrics.json" not in kill["files"]
    assert "manifest.json" not in kill["files"]
    assert f"step-{kill['step']:06d}" in kill["checkpoints"]
    assert len(kill["checkpoints"]) >= 2, "keep_checkpoints is 2"


def test_resumed_run_equals_the_uninterrupted_run(resume: dict[str, Any]) -> None:
    result, run, full = resume["resumed_result"], resume["killed"], resume["full"].path
    assert result.returncode == 0, describe(result)
    assert f"resuming {run} from checkpoint step-{resume['kill']['step']:06d}" in result.stdout
    assert "warning" not in result.stdout
    assert_same_weights(run, full)
    assert_same_history(run, full)
    ours, theirs = read_json(run / "metrics.json"), read_json(full / "metrics.json")
    assert ours["splits"] == theirs["splits"]
    for key in ("steps", "epochs", "examples", "best_step", "best_value"):
        assert ours["training"][key] == theirs["training"][key], key
    for name, digest in read_json(run / "manifest.json")["files"].items():
        assert sha256(run / name) == digest, name


def test_resume_allows_changing_max_steps(resume: dict[str, Any]) -> None:
    assert resume["kill"]["config"] is not None and resume["kill"]["config"]["train"]["max_steps"] == 100000
    assert resume["resumed_result"].returncode == 0, describe(resume["resumed_result"])
    resolved = yaml.safe_load((resume["killed"] / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == MAX_STEPS
    assert read_json(resume["killed"] / "metrics.json")["training"]["total_steps"] == MAX_STEPS


def test_truncated_checkpoint_is_skipped_for_the_previous_one(resume: dict[str, Any]) -> None:
    result, run = resume["truncated_result"], resume["truncated"]
    assert result.returncode == 0, describe(result)
    newest, previous = resume["newest"], resume["previous"]
    lines = result.stdout.splitlines()
    warning = next((line for line in lines if newest in line and "unusable" in line), None)
    assert warning is not None, result.stdout
    assert "falling back" in warning and "model.safetensors" in warning
    assert f"resuming {run} from checkpoint {previous}" in result.stdout
    assert_same_weights(run, resume["full"].path)
    assert_same_history(run, resume["full"].path)
    state = read_json(run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip() / "state.json")
    assert state["step"] == MAX_STEPS


def test_resume_with_a_changed_config_is_refused(resume: dict[str, Any]) -> None:
    run = resume["changed"]
    line = assert_user_error(resume["changed_result"], str(run), "train.lr")
    assert "train.max_steps" in line, "the message says what may change"
    after = {p.name: sha256(p) for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == resume["changed_before"], "the refused resume changed the run directory"
    assert not (run / "model.safetensors").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == resume["kill"]["checkpoints"]



def test_ctrl_c_keeps_the_run_and_says_how_to_resume_it(resume: dict[str, Any]) -> None:
    interrupt, run = resume["interrupt"], resume["interrupted"]
    assert interrupt["returncode"] != -signal.SIGINT, "SIGINT killed the process instead of being handled"
    assert "Traceback" not in interrupt["stderr"], interrupt["stderr"]
    assert f"--resume {run}" in interrupt["output"].splitlines()[-1], interrupt["output"][-1000:]
    assert interrupt["checkpoints"], "the interrupted run kept its checkpoints"
    assert "model.safetensors" not in interrupt["files"]


def test_ctrl_c_exits_130_and_says_interrupted(resume: dict[str, Any]) -> None:
    interrupt = resume["interrupt"]
    assert interrupt["returncode"] == 130, interrupt
    assert interrupt["stderr"].strip() == "interrupted"


def test_sigterm_stops_like_ctrl_c_keeps_a_complete_checkpoint_and_exits_143(resume: dict[str, Any]) -> None:
    terminate, run = resume["terminate"], resume["terminated"]
    assert terminate["returncode"] == 143, terminate
    assert terminate["stderr"].strip() == "terminated", terminate["stderr"]
    assert "continue it with: forgeml train " in terminate["output"].splitlines()[-1], terminate["output"][-1000:]
    assert f"--resume {run}" in terminate["output"].splitlines()[-1]
    assert "model.safetensors" not in terminate["files"] and "manifest.json" not in terminate["files"]
    kept, warnings = resume["terminated_kept"]
    assert kept == f"step-{terminate['step']:06d}" and terminate["step"] >= CHECKPOINT_EVERY, (kept, terminate["step"])
    assert warnings == [], "the newest checkpoint is complete"


def test_resume_removes_what_killed_writes_left_and_ends_as_the_uninterrupted_run(resume: dict[str, Any]) -> None:
    result, run = resume["resumed_result"], resume["killed"]
    assert result.returncode == 0, describe(result)
    removed = next((line for line in result.stdout.splitlines() if line.startswith("removed what interrupted writes left")), "")
    assert removed.startswith(f"removed what interrupted writes left in {run}: "), result.stdout
    named = removed.split(": ", 1)[1].split(", ")
    assert set(resume["leftovers"]) <= set(named), named  # and whatever the SIGKILL itself interrupted
    assert hidden_entries(run) == [USER_FILE], "every temporary file and folder is gone; the user's file is kept"
    assert (run / USER_FILE).read_bytes() == b"mine"
    assert_same_weights(run, resume["full"].path)  # test_resumed_run_equals_the_uninterrupted_run checks the rest


def test_sigterm_stops_the_pipeline_s_training_the_same_way(resume: dict[str, Any]) -> None:
    stopped, run = resume["pipeline"], resume["pipeline_run"]
    assert stopped["returncode"] == 143, stopped
    assert stopped["stderr"].strip() == "terminated", stopped["stderr"]
    assert f"--resume {run}" in stopped["output"].splitlines()[-1], stopped["output"][-1000:]
    assert stopped["checkpoints"] and "model.safetensors" not in stopped["files"]
