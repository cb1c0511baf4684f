"""forgeml attack and forgeml audit through the real command line: what they print and what they
write into the run (JSON, PNGs, the manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import review_classifier, write_reviews  # tests/ is on sys.path (pyproject)

import forgeml

from .support import TrainedRun, assert_user_error, describe, forge, in_parallel_groups, read_json

PNG = b"\x89PNG\r\n\x1a\n"
SEVEN = Path(__file__).resolve().parents[2] / "examples" / "data" / "digits" / "seven.png"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text_attack")
    config = review_classifier(write_reviews(root / "reviews.csv", rows=120), {"type": "textcnn", "embedding_dim": 8, "kernels": [1], "filters": 4}, epochs=5)
    return forgeml.train(config, out=root / "run", quiet=True).run_dir


@pytest.fixture(scope="module")
def calls(digits_run: TrainedRun, text_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = digits_run.path
    notes = tmp_path_factory.mktemp("scrub") / "notes.csv"
    notes.write_text('id,text\n1,"write to jo@example.com, or call +44 20 7946 0958"\n2,version 1.2.3 costs $4.99\n')
    return {"notes": notes} | in_parallel_groups(
        {  # one writer at a time on the digits run
            "pgd": lambda: forge("attack", run, "--eps", "0.1,0.3", "--steps", "3", "--n", "40"),
            "fgsm_json": lambda: forge("attack", run, "--method", "fgsm", "--norm", "l2", "--eps", "1", "--json"),
            "audit": lambda: forge("audit", run, "--membership"),
            "bad_method": lambda: forge("attack", run, "--method", "cw"),
            "bad_eps": lambda: forge("attack", run, "--eps", "-0.1"),
            "explain_nothing": lambda: forge("explain", run),
            "explain": lambda: forge("explain", run, SEVEN, "--method", "saliency", "--target", "7"),
            "faithfulness": lambda: forge("explain", run, "--faithfulness", "--n", "30", "--methods", "ig,saliency"),
        },
        {
            "text": lambda: forge("attack", text_run, "--eps", "0.5,2", "--steps", "3"),
            "scrub": lambda: forge("data", "scrub", notes, "--column", "text"),
            "scrub_bad_kind": lambda: forge("data", "scrub", notes, "--column", "text", "--kinds", "email,name"),
        },
    )


def test_attack_prints_robust_accuracy_and_writes_the_result(calls: dict[str, Any], digits_run: TrainedRun):
    result = calls["pgd"]
    assert result.returncode == 0, describe(result)
    assert "PGD-3 (linf) on the test split, 40 examples; perturbed in pixel values in [0, 1]" in result.stdout
    assert "0 (clean)" in result.stdout and "0.3" in result.stdout
    saved = read_json(digits_run.path / "attack.json")["pgd_linf"]
    assert saved["rows"] == 40 and [p["eps"] for p in saved["points"]] == [0.1, 0.3]
    assert all(p["max_perturbation"] <= p["eps"] + 1e-6 for p in saved["points"])
    assert saved["points"][1]["robust_accuracy"] <= saved["points"][0]["robust_accuracy"] <= saved["clean_accuracy"]
    assert saved["files"] == ["attack_pgd_linf.png", "attack_pgd_linf_examples.png"]
    manifest = read_json(digits_run.path / "manifest.json")["files"]
    for name in ["attack.json", *saved["files"]]:
        assert (digits_run.path / name).read_bytes()[:8] == PNG or name.endswith(".json")
        assert name in manifest


def test_attack_json_output_and_entries_per_method(calls: dict[str, Any], digits_run: TrainedRun):
    result = calls["fgsm_json"]
    assert result.returncode == 0, describe(result)
    printed = json.loads(result.stdout)
    assert printed["method"] == "fgsm" and printed["norm"] == "l2" and printed["steps"] == 1
    assert printed["points"][0]["max_perturbation"] <= 1.0 + 1e-6
    assert {"pgd_linf", "fgsm_l2"} <= set(read_json(digits_run.path / "attack.json"))


def test_a_text_model_is_attacked_in_its_embedding_space(calls: dict[str, Any], text_run: Path):
    result = calls["text"]
    assert result.returncode == 0, describe(result)
    assert "perturbed in token embedding space (text ids cannot be perturbed)" in result.stdout
    saved = read_json(text_run / "attack.json")["pgd_linf"]
    assert saved["files"] == ["attack_pgd_linf.png"]  # no example pictures for texts


def test_audit_prints_the_attack_auc_and_writes_audit_json(calls: dict[str, Any], digits_run: TrainedRun):
    result = calls["audit"]
    assert result.returncode == 0, describe(result)
    assert "membership inference (loss threshold) on 179 training and 179 test examples" in result.stdout
    assert "attack AUC" in result.stdout
    saved = read_json(digits_run.path / "audit.json")["membership"]
    assert 0 <= saved["auc"] <= 1 and 0 <= saved["advantage"] <= 1
    assert (digits_run.path / "audit_membership.png").read_bytes()[:8] == PNG


def test_attack_mistakes_are_one_line_errors(calls: dict[str, Any]):
    assert_user_error(calls["bad_method"], "--method", "fgsm, pgd")
    assert_user_error(calls["bad_eps"], "--eps", "positive")


def test_data_scrub_writes_a_scrubbed_copy_and_counts(calls: dict[str, Any]):
    result = calls["scrub"]
    assert result.returncode == 0, describe(result)
    assert "2 rows, 1 changed in column 'text': 1 EMAIL, 1 PHONE" in result.stdout
    scrubbed = calls["notes"].with_name("notes.scrubbed.csv")
    assert scrubbed.read_text() == 'id,text\n1,"write to [EMAIL], or call [PHONE]"\n2,version 1.2.3 costs $4.99\n'
    assert_user_error(calls["scrub_bad_kind"], "--kinds", "NAME")


def test_explain_prints_the_strongest_pixels_and_writes_the_files(calls: dict[str, Any], digits_run: TrainedRun):
    result = calls["explain"]
    assert result.returncode == 0, describe(result)
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith(f"{SEVEN}: 7 (p ") and "strongest: " in first
    png = digits_run.path / "explanations" / "000_seven_png_saliency.png"
    assert second == f"  written: {png.with_suffix('.json')}, {png}" and png.read_bytes()[:8] == PNG
    assert read_json(digits_run.path / "explain.json")["saliency"]["inputs"][0]["target"] == "7"


def test_explain_faithfulness_prints_a_verdict_per_method(calls: dict[str, Any], digits_run: TrainedRun):
    result = calls["faithfulness"]
    assert result.returncode == 0, describe(result)
    assert "deletion curves on 30 test examples, 20 steps" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith(("ig ", "saliency "))]
    assert len(lines) == 2 and all("than random" in line for line in lines)
    assert (digits_run.path / "explain_faithfulness.png").read_bytes()[:8] == PNG
    assert_user_error(calls["explain_nothing"], "give inputs to explain")
