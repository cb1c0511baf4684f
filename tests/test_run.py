"""The run directory: atomic writes, the manifest, checkpoints and their fallback, create / open rules."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import tiny_config

from forgeml.errors import RunDirError
from forgeml.files import staging_dir
from forgeml.run import RunDir, atomic_write


def files_in(directory: Path) -> list[str]:
    """Every entry under ``directory`` (hidden ones included), relative and sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def make_run(path: Path) -> RunDir:
    """A minimal run directory: the files every finished run holds, and its manifest."""
    run = RunDir.create(path)
    run.write_yaml("config.yaml", {"name": "x", "data": {"source": "digits"}, "model": {"type": "mlp"}})
    run.write_json("features.json", {"version": 1})
    run.write_bytes("model.safetensors", b"weights")
    run.write_json("metrics.json", {"test": {"accuracy": 0.5}})
    run.write_manifest()
    return run


# --------------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_writes_and_leaves_no_temporary_files(tmp_path: Path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert files_in(tmp_path) == ["sub", "sub/file.bin"]


def test_atomic_write_gives_normal_file_permissions(tmp_path: Path):
    atomic_write(tmp_path / "a", b"x")
    (tmp_path / "b").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == stat.S_IMODE((tmp_path / "b").stat().st_mode)


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "file.json"
    atomic_write(target, b"old")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert files_in(tmp_path) == ["file.json"]


def test_json_and_yaml_round_trip(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    run.write_json("a.json", {"x": [1, 2.5, "é"]})
    run.write_yaml("b.yaml", {"y": {"z": None}})
    assert run.read_json("a.json") == {"x": [1, 2.5, "é"]}
    assert run.read_yaml("b.yaml") == {"y": {"z": None}}


def test_reading_missing_or_corrupt_files_names_them(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"metrics\.json: missing from the run directory"):
        run.read_json("metrics.json")
    (run.path / "metrics.json").write_text('{"a": ')
    with pytest.raises(RunDirError, match=r"metrics\.json: corrupt JSON \(.* at line 1\)"):
        run.read_json("metrics.json")
    (run.path / "config.yaml").write_text("a: [1\n")
    with pytest.raises(RunDirError, match=r"config\.yaml: corrupt YAML"):
        run.read_yaml("config.yaml")


# --------------------------------------------------------------------------------------------------
# manifest


def test_manifest_holds_the_sha256_of_every_top_level_file(tmp_path: Path):
    run = make_run(tmp_path / "run")
    manifest = run.read_json("manifest.json")["files"]
    assert sorted(manifest) == ["config.yaml", "features.json", "metrics.json", "model.safetensors"]
    assert manifest["model.safetensors"] == hashlib.sha256(b"weights").hexdigest()
    run.verify(["config.yaml", "model.safetensors", "metrics.json"])


def test_verify_detects_a_changed_file(tmp_path: Path):
    run = make_run(tmp_path / "run")
    (run.path / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(RunDirError) as info:
        run.verify(["config.yaml", "model.safetensors"])
    assert str(info.value) == f"{run.path / 'model.safetensors'}: corrupt (its sha256 does not match manifest.json)"


def test_verify_detects_a_missing_file_and_a_missing_manifest(tmp_path: Path):
    run = make_run(tmp_path / "run")
    (run.path / "metrics.json").unlink()
    with pytest.raises(RunDirError, match=r"metrics\.json: missing from the run directory"):
        run.verify(["metrics.json"])
    (run.path / "manifest.json").unlink()
    with pytest.raises(RunDirError, match=r"no manifest\.json; the run did not finish"):
        run.verify(["config.yaml"])


def test_write_manifest_of_some_names_keeps_the_others(tmp_path: Path):
    run = make_run(tmp_path / "run")
    run.write_json("evaluate.json", {"test": {}})
    run.write_manifest(["evaluate.json"])
    assert sorted(run.read_json("manifest.json")["files"]) == ["config.yaml", "evaluate.json", "features.json", "metrics.json", "model.safetensors"]
    run.verify(["evaluate.json", "model.safetensors"])


def test_verify_refuses_a_manifest_that_leaves_a_file_out(tmp_path: Path):
    run = make_run(tmp_path / "run")
    manifest = run.path / "manifest.json"
    files = run.read_json("manifest.json")["files"]
    run.write_json("calibration.json", {"temperature": 2.0})  # a file the manifest never listed
    with pytest.raises(RunDirError) as info:
        run.verify(["calibration.json"])
    assert str(info.value) == (
        f"{manifest}: does not list calibration.json, so the run cannot be checked; it was cut down or edited (train the run again)"
    )
    # an emptied manifest used to check nothing; now every file a run needs must be listed
    manifest.write_text(json.dumps({"files": {}}))
    with pytest.raises(RunDirError, match=r"does not list config\.yaml, features\.json, model\.safetensors, metrics\.json, so"):
        run.verify([])
    manifest.write_text(json.dumps({"files": {k: v for k, v in files.items() if k != "model.safetensors"}}))
    (run.path / "model.safetensors").write_bytes(b"other weights")  # changed, and its entry dropped to hide it
    with pytest.raises(RunDirError, match=r"manifest\.json: does not list model\.safetensors, so"):
        run.verify(["config.yaml"])


@pytest.mark.parametrize(
    "manifest, found",
    [
        ([], "not a forgeml manifest (expected {\"files\": {file: sha256}}; found a list)"),
        ("files", "not a forgeml manifest (expected {\"files\": {file: sha256}}; found a string)"),
        ({"config.yaml": "ab"}, "not a forgeml manifest (expected {\"files\": {file: sha256}}; no 'files')"),
        ({"files": ["config.yaml"]}, "not a forgeml manifest (expected {\"files\": {file: sha256}}; 'files' is a list)"),
        ({"files": None}, "not a forgeml manifest (expected {\"files\": {file: sha256}}; 'files' is null)"),
        ({"files": {"config.yaml": 12}}, "the entry for 'config.yaml' is 12, not a sha256 (64 hex digits)"),
        ({"files": {"config.yaml": {"sha256": "ab"}}}, 'the entry for \'config.yaml\' is {"sha256": "ab"}, not a sha256 (64 hex digits)'),
        ({"files": {"config.yaml": "A" * 64}}, f"the entry for 'config.yaml' is \"{'A' * 64}\", not a sha256 (64 hex digits)"),
    ],
)
def test_verify_refuses_a_manifest_of_another_shape(tmp_path: Path, manifest: object, found: str):
    run = make_run(tmp_path / "run")
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirError) as info:
        run.verify(["config.yaml"])
    assert str(info.value) == f"{run.path / 'manifest.json'}: {found}"


# --------------------------------------------------------------------------------------------------
# history


def test_history_drops_a_torn_line_and_truncates_on_resume(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    for step in (1, 2, 3):
        run.append_history({"step": step, "loss": 1.0 / step})
    with (run.path / "history.jsonl").open("a") as handle:
        handle.write('{"step": 4, "lo')  # a crash in the middle of a line
    assert [r["step"] for r in run.read_history()] == [1, 2, 3]
    run.truncate_history(2)
    assert [r["step"] for r in run.read_history()] == [1, 2]
    assert RunDir.create(tmp_path / "empty").read_history() == []


# --------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_files(step: int) -> dict[str, bytes]:
    """Distinct checkpoint contents for a step."""
    return {"model.safetensors": f"model {step}".encode(), "state.json": json.dumps({"step": step}).encode()}


def test_save_checkpoint_writes_a_complete_directory_and_points_latest_at_it(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    final = run.save_checkpoint(12, checkpoint_files(12), keep=2)
    assert final == run.path / "checkpoints" / "step-000012"
    assert files_in(run.path / "checkpoints") == [
        "latest",
        "step-000012",
        "step-000012/manifest.json",
        "step-000012/model.safetensors",
        "step-000012/state.json",
    ]
    assert (run.path / "checkpoints" / "latest").read_text() == "step-000012\n"
    manifest = json.loads((final / "manifest.json").read_text())["files"]
    assert manifest == {name: hashlib.sha256(data).hexdigest() for name, data in checkpoint_files(12).items()}


def test_save_checkpoint_keeps_only_the_newest(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    for step in (5, 10, 15, 20, 25):
        run.save_checkpoint(step, checkpoint_files(step), keep=2)
    assert run.checkpoint_names() == ["step-000025", "step-000020"]
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["latest", "step-000020", "step-000025"]
    assert run.load_checkpoint() == ("step-000025", checkpoint_files(25))


def test_resaving_a_step_replaces_it(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    run.save_checkpoint(3, {"a": b"old"}, keep=2)
    run.save_checkpoint(3, {"a": b"new"}, keep=2)
    assert run.load_checkpoint() == ("step-000003", {"a": b"new"})


def test_load_checkpoint_skips_a_truncated_file_warns_and_falls_back(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    run.save_checkpoint(6, checkpoint_files(6), keep=3)
    run.save_checkpoint(12, checkpoint_files(12), keep=3)
    model = run.path / "checkpoints" / "step-000012" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:3])
    warnings: list[str] = []
    assert run.load_checkpoint(warn=warnings.append) == ("step-000006", checkpoint_files(6))
    assert warnings == [
        "checkpoint step-000012 is unusable (model.safetensors: sha256 mismatch, the file is truncated or corrupt); "
        "falling back to the previous one"
    ]


def test_load_checkpoint_skips_missing_files_and_manifests(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    for step in (1, 2, 3):
        run.save_checkpoint(step, checkpoint_files(step), keep=3)
    (run.path / "checkpoints" / "step-000003" / "state.json").unlink()
    (run.path / "checkpoints" / "step-000002" / "manifest.json").unlink()
    warnings: list[str] = []
    assert run.load_checkpoint(warn=warnings.append) == ("step-000001", checkpoint_files(1))
    assert len(warnings) == 2
    assert warnings[0].startswith("checkpoint step-000003 is unusable (state.json is missing)")
    assert warnings[1].startswith("checkpoint step-000002 is unusable (no manifest.json)")
    (run.path / "checkpoints" / "step-000001" / "manifest.json").write_text("{")
    assert run.load_checkpoint(warn=warnings.append) is None
    assert "corrupt manifest.json" in warnings[-1]


def test_a_half_written_checkpoint_directory_is_ignored(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    run.save_checkpoint(4, checkpoint_files(4), keep=2)
    (run.path / "checkpoints" / ".step-000008.abcd").mkdir()  # what a crash during save leaves
    assert run.checkpoint_names() == ["step-000004"]
    assert run.load_checkpoint() == ("step-000004", checkpoint_files(4))


def test_no_checkpoint_at_all(tmp_path: Path):
    assert RunDir.create(tmp_path / "run").load_checkpoint() is None


def test_checkpoints_past_a_million_steps_keep_the_newest(tmp_path: Path):
    run = RunDir.create(tmp_path / "run")
    run.save_checkpoint(999_999, checkpoint_files(999_999), keep=1)
    run.save_checkpoint(1_000_000, checkpoint_files(1_000_000), keep=1)
    assert run.load_checkpoint() == ("step-1000000", checkpoint_files(1_000_000))


class Killed(BaseException):
    """Stands for SIGKILL in the middle of a write."""


def killed_write(monkeypatch: pytest.MonkeyPatch, write: Callable[[], object]) -> None:
    """Run ``write`` as a process killed before its first rename would: nothing of it is cleaned up
    (a killed process runs no ``except``), so its temporary files and folders stay as they were."""

    def kill(*args: object) -> None:
        raise Killed()

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", kill)
        patch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
        patch.setattr(shutil, "rmtree", lambda path, ignore_errors=False: None)
        with pytest.raises(Killed):
            write()


def test_remove_leftovers_takes_what_killed_writes_left_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run = make_run(tmp_path / "run")
    run.save_checkpoint(4, checkpoint_files(4), keep=2)
    finished = set(files_in(run.path))
    killed_write(monkeypatch, lambda: run.save_checkpoint(8, checkpoint_files(8), keep=2))
    killed_write(monkeypatch, lambda: run.write_bytes("model.safetensors", b"new weights"))
    (staging_dir(run.path, "export") / "model.onnx").write_bytes(b"half a bundle")
    left = sorted(set(files_in(run.path)) - finished)
    leftovers = [p for p in left if "/" not in p.removeprefix("checkpoints/")]  # each with what it holds
    assert [p.split(".")[1] for p in leftovers] == ["export", "model", "step-000008"], left
    assert len(left) == 5, left  # and the staged model.onnx and checkpoint's .model.safetensors.*.tmp
    user = {  # hidden or temporary-looking, but not names forgeml's writes give: kept
        ".notes.tmp": b"n",
        "notes.abcdefgh.tmp": b"n",
        ".model.safetensors.abc.tmp": b"n",
        ".model.safetensors.ABCDEFGH.tmp": b"n",
        "checkpoints/.step-000012.abcdefgh.bak": b"n",
    }
    for name, data in user.items():
        (run.path / name).write_bytes(data)
    (run.path / ".backup.abcdefgh").mkdir()  # a folder, but not one forgeml stages in a run
    (run.path / ".backup.abcdefgh" / "x").write_bytes(b"x")
    (tmp_path / "outside.txt").write_bytes(b"o")
    (run.path / ".link.abcdefgh.tmp").symlink_to(tmp_path / "outside.txt")
    before = set(files_in(run.path))

    assert run.remove_leftovers() == leftovers

    assert set(files_in(run.path)) == before - set(left)
    assert all((run.path / name).read_bytes() == data for name, data in user.items())
    assert (tmp_path / "outside.txt").read_bytes() == b"o"
    assert run.load_checkpoint() == ("step-000004", checkpoint_files(4))
    run.verify(["config.yaml", "model.safetensors", "metrics.json"])  # the finished files are untouched
    assert run.remove_leftovers() == []


# --------------------------------------------------------------------------------------------------
# creating and opening


def test_an_existing_run_directory_is_refused_unless_overwrite(tmp_path: Path):
    run = make_run(tmp_path / "run")
    with pytest.raises(RunDirError) as info:
        RunDir.create(run.path)
    assert str(info.value) == (
        f"{run.path}: the run directory already exists; continue it with --resume {run.path}, "
        f"replace it with --overwrite, or choose another with --out"
    )
    assert (run.path / "model.safetensors").read_bytes() == b"weights"  # untouched
    fresh = RunDir.create(run.path, overwrite=True)
    assert fresh.path == run.path and list(run.path.iterdir()) == []


def test_overwriting_a_directory_that_is_not_a_run_is_refused(tmp_path: Path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(RunDirError, match=r"not a forgeml run directory; refusing to overwrite it"):
        RunDir.create(precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_create_accepts_an_empty_directory_and_refuses_a_file(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert RunDir.create(tmp_path / "empty").path.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r"exists and is not a directory"):
        RunDir.create(tmp_path / "file", overwrite=True)


def test_open_needs_a_directory_with_config_yaml(tmp_path: Path):
    with pytest.raises(RunDirError, match=r"no such run directory"):
        RunDir.open(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    with pytest.raises(RunDirError, match=r"not a forgeml run directory \(no config\.yaml\)"):
        RunDir.open(tmp_path / "other")
    assert RunDir.open(make_run(tmp_path / "run").path).path == tmp_path / "run"


# --------------------------------------------------------------------------------------------------
# resuming a training run through the run directory


@pytest.mark.usefixtures("single_thread_torch")
def test_resume_skips_a_truncated_checkpoint_and_still_ends_bit_for_bit(tmp_path: Path, capsys: pytest.CaptureFixture):
    from safetensors.torch import load_file

    from forgeml.training.job import train

    config = tiny_config()  # 12 steps, checkpoints at steps 6 and 12
    train(config, out=tmp_path / "whole", quiet=True)
    train(config, out=tmp_path / "resumed", quiet=True)
    model = tmp_path / "resumed" / "checkpoints" / "step-000012" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:64])  # a crash left the newest checkpoint truncated
    capsys.readouterr()
    result = train(config, resume=tmp_path / "resumed", live_progress=False)
    output = capsys.readouterr().out
    assert (
        "warning: checkpoint step-000012 is unusable (model.safetensors: sha256 mismatch, the file is truncated "
        "or corrupt); falling back to the previous one" in output
    )
    assert f"resuming {tmp_path / 'resumed'} from checkpoint step-000006" in output
    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert result.metrics["splits"] == json.loads((tmp_path / "whole" / "metrics.json").read_text())["splits"]
    RunDir.open(result.run_dir).verify(["config.yaml", "features.json", "model.safetensors", "metrics.json"])
