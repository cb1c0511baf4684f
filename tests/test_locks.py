"""One writer per run: the lock file, re-entrance within a process, refusal across processes, and
--overwrite that replaces only a run and nothing of the user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgeml import locks
from forgeml.config import validate_config
from forgeml.errors import ConfigError, ForgeError, RunDirError
from forgeml.run import RunDir
from forgeml.training.job import run_path
from helpers import tiny_config
from test_run import make_run

HOLD = """
import sys, time
from forgeml import locks
with locks.{mode}(sys.argv[1]{create}):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_another_process(path: Path, mode: str = "writing") -> subprocess.Popen:
    """A real second process that holds the run's lock until killed."""
    code = HOLD.format(mode=mode, create=", create=True" if mode == "writing" else "")
    process = subprocess.Popen([sys.executable, "-c", code, str(path), "forgeml", "train", "x.yaml"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_with_the_holders_pid_and_command(tmp_path: Path):
    run = make_run(tmp_path / "run")
    holder = hold_in_another_process(run.path)
    try:
        recorded = json.loads((run.path / locks.LOCK).read_text())
        assert recorded["pid"] == holder.pid and "x.yaml" in recorded["command"]
        with pytest.raises(RunDirError, match=rf"{run.path}: in use by pid {holder.pid} on .*x\.yaml.*; wait for it to finish"):
            with locks.writing(run.path):
                pass
        with pytest.raises(RunDirError, match=rf"being written by pid {holder.pid}"):
            with locks.reading(run.path):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the kernel let go of the killed holder's lock: a stale lock file does not block the next writer
    with locks.writing(run.path, ["forgeml", "evaluate"]):
        assert json.loads((run.path / locks.LOCK).read_text())["pid"] == os.getpid()


def test_readers_share_the_lock_and_keep_writers_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run = make_run(tmp_path / "run")
    reader = hold_in_another_process(run.path, "reading")
    monkeypatch.setattr(locks, "READERS_WAIT", 0.3)  # a writer waits this long for readers to finish loading
    try:
        with locks.reading(run.path):  # a second reader is welcome
            pass
        started = time.monotonic()
        with pytest.raises(RunDirError, match=r"being read by other processes .* for over 0.3 s; try again"):
            with locks.writing(run.path):
                pass
        assert 0.3 <= time.monotonic() - started < 5
    finally:
        reader.kill()
        reader.wait()


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path):
    path = tmp_path / "run"
    with locks.writing(path, create=True):
        with locks.writing(path):  # the pipeline holds it, the stage it calls takes it again
            with locks.reading(path):  # and forgeml.load reads the run inside the stage
                pass
        assert str(path.resolve()) in locks._held
    assert locks._held == {}


def test_a_missing_directory_is_not_created_by_a_stage_or_a_reader(tmp_path: Path):
    with locks.writing(tmp_path / "typo"):
        pass
    with locks.reading(tmp_path / "typo"):
        pass
    assert not (tmp_path / "typo").exists()


# --------------------------------------------------------------------------------------------------
# the run name and --overwrite


@pytest.mark.parametrize("name", ["../victim", "a/b", "..", ".hidden", "back\\slash", ""])
def test_a_run_name_is_one_folder_name(name: str):
    with pytest.raises(ConfigError, match="name: .*is not a run name"):
        validate_config(tiny_config(name=name))


def test_a_link_named_like_the_run_does_not_lead_out_of_output_dir(tmp_path: Path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(tmp_path / "elsewhere")
    cfg = validate_config(tiny_config(output={"dir": str(tmp_path / "runs")}))
    with pytest.raises(RunDirError, match=r"is a link .*give --out"):
        run_path(cfg, None)
    assert run_path(cfg, tmp_path / "explicit") == tmp_path / "explicit"


def test_overwrite_keeps_the_old_run_aside_until_the_new_one_is_complete(tmp_path: Path):
    old = make_run(tmp_path / "run")
    with locks.writing(old.path):
        new = RunDir.create(old.path, overwrite=True)
        assert list(new.path.iterdir()) == [new.path / locks.LOCK]  # the lock moved to the new run
        assert (new.replaced / "model.safetensors").read_bytes() == b"weights"
        new.restore_replaced()  # the new run failed before its first checkpoint: the old one comes back
        assert (old.path / "model.safetensors").read_bytes() == b"weights"
        assert not (tmp_path / ".run.replaced").exists()
        again = RunDir.create(old.path, overwrite=True)
        again.drop_replaced()
        assert not (tmp_path / ".run.replaced").exists() and not (old.path / "model.safetensors").exists()


def test_overwrite_never_deletes_what_forgeml_did_not_write(tmp_path: Path):
    run = make_run(tmp_path / "run")
    (run.path / "thesis.txt").write_text("years of work")
    (run.path / "src").mkdir()
    with pytest.raises(RunDirError, match=r"holds files that are not part of the run \(src/, thesis.txt\); refusing to overwrite it"):
        RunDir.create(run.path, overwrite=True)
    assert (run.path / "thesis.txt").read_text() == "years of work" and (run.path / "model.safetensors").is_file()
    (run.path / "thesis.txt").unlink()
    (run.path / "src").rmdir()
    (run.path / "manifest.json").write_text("[]")
    with pytest.raises(RunDirError, match="its manifest.json does not describe a run"):
        RunDir.create(run.path, overwrite=True)


def test_every_folder_forgeml_writes_into_a_run_is_its_own(tmp_path: Path):
    run = make_run(tmp_path / "run")
    for folder in ("checkpoints/step-000004", "export", "explanations", "tokens", ".tokens.tmp", ".export.ab12cd34"):
        (run.path / folder).mkdir(parents=True)
    (run.path / ".metrics.json.ab12cd34.tmp").write_text("a killed write")
    RunDir.create(run.path, overwrite=True).drop_replaced()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_folder_of_other_files_is_not_offered_to_overwrite(tmp_path: Path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    with pytest.raises(RunDirError) as refused:
        RunDir.create(tmp_path / "home")
    assert str(refused.value) == f"{tmp_path / 'home'}: exists and holds files, but is not a forgeml run directory; choose another with --out"


def test_someone_elses_config_yaml_is_not_a_run(tmp_path: Path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text("replicas: 3\nimage: web:latest\n")
    with pytest.raises(RunDirError, match="not a forgeml run directory; refusing to overwrite it"):
        RunDir.create(folder, overwrite=True)
    assert (folder / "config.yaml").read_text().startswith("replicas")


def test_a_second_train_into_a_live_run_is_refused_at_once(tmp_path: Path):
    """Two real `forgeml train` processes on one run directory: the second is refused at once, with
    or without --overwrite, and names the first; once the first is killed, its lock is gone."""
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_config(train={"epochs": 1000, "max_steps": 10**6, "batch_size": 8, "lr": 0.01, "log_every": 1000, "checkpoint_every": 10**6})))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "forgeml", "train", str(config), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while (locks.holder(out) or {}).get("pid") != first.pid:
            assert time.monotonic() < deadline and first.poll() is None, "the first training never took the lock"
            time.sleep(0.05)
        seconds = [
            subprocess.Popen([sys.executable, "-m", "forgeml", "train", str(config), "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for extra in ([], ["--overwrite"])
        ]
        for second in seconds:
            _, stderr = second.communicate(timeout=120)
            assert second.returncode == 2, stderr
            assert stderr.startswith(f"error: {out}: in use by pid {first.pid} on ") and "forgeml train" in stderr, stderr
        assert first.poll() is None, "the refused trainings stopped the first"
    finally:
        first.kill()
        first.wait()
    with locks.writing(out):  # the kernel released the killed process's lock: no stale lock is left to clear
        assert locks.holder(out)["pid"] == os.getpid()


def test_an_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(tmp_path: Path):
    from forgeml.files import sha256_file
    from forgeml.training.job import train

    out = tmp_path / "run"
    train(tiny_config(), out=out, quiet=True)
    before = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file() and p.name != locks.LOCK}
    missing = tiny_config(data={"source": {"type": "csv", "path": str(tmp_path / "missing.csv")}, "target": {"type": "category", "name": "label"}})
    with pytest.raises(ForgeError, match="missing.csv"):
        train(missing, out=out, overwrite=True, quiet=True)
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file() and p.name != locks.LOCK} == before
    assert not (tmp_path / ".run.replaced").exists()
    assert locks._held == {}


def test_the_pipeline_does_not_offer_to_overwrite_a_folder_that_is_not_a_run(tmp_path: Path):
    from forgeml.pipeline import run as pipeline

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text("data: {source: somewhere}\nmodel: {layers: 3}\n")  # another tool's config
    (folder / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match=r"holds files that are not part of the run \(notes.txt\); refusing to overwrite it"):
            pipeline(tiny_config(), out=folder, overwrite=overwrite, echo=lambda text: None, quiet_training=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "notes.txt"]
