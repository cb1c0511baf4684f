"""The report of a run: one self-contained HTML page (and report.json) with a section per stage;
stages that have not run show the command that runs them; it renders in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import tiny_config, write_reviews

import forgeml
from forgeml.report import run as report

pytestmark = pytest.mark.usefixtures("single_thread_torch")

SECTIONS = ["summary", "data", "training", "evaluation", "calibration", "explanations", "robustness", "privacy", "export", "environment"]
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr"}


class Page(HTMLParser):
    """Checks that tags nest and close, and collects section ids, tag names and every attribute value."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.sections: list[str] = []
        self.tags: set[str] = set()
        self.attributes: list[str] = []
        self.text: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes += [value or "" for _, value in attrs]
        if tag == "section":
            self.sections.append(dict(attrs).get("id") or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.problems and not page.stack, (page.problems, page.stack)
    return page


def self_contained(page: Page) -> None:
    """No script, stylesheet link or frame, and every src / href is a data URI or a #fragment."""
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    for value in page.attributes:
        assert not re.search(r"https?://", value), value
    sources = [v for v in page.attributes if v.startswith(("data:", "#"))]
    assert sources  # the pictures and the navigation


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny digits CNN with every classifier stage but export run on it."""
    from forgeml.calibration import run as calibrate
    from forgeml.evaluation import run as evaluate
    from forgeml.explanation import faithfulness, run_split
    from forgeml.privacy import membership
    from forgeml.robustness import run as attack

    config = tiny_config(train={"epochs": 3, "batch_size": 32, "lr": 0.01, "log_every": 4})
    run_dir = forgeml.train(config, out=tmp_path_factory.mktemp("report") / "digits", quiet=True).run_dir
    evaluate(run_dir)
    calibrate(run_dir)
    run_split(run_dir, n=2)
    faithfulness(run_dir, ["ig", "saliency"], limit=20)
    attack(run_dir, eps=[0.1, 0.2], steps=3, limit=40)
    membership(run_dir, limit=60)
    return run_dir


def test_the_report_holds_every_section_and_names_the_missing_stage(classifier: Path):
    result = report(classifier)
    assert result.html == classifier / "report.html" and result.json == classifier / "report.json"
    page = parse(result.html)
    assert page.sections == SECTIONS
    self_contained(page)
    text = " ".join(page.text)
    assert result.missing == {"export": f"forgeml export {classifier}"}
    assert f"Not run yet: forgeml export {classifier}" in " ".join(text.split())
    for shown in ("Confusion matrix", "Most confident mistakes", "Temperature", "Faithfulness", "PGD-3", "Membership inference", "Resolved config"):
        assert shown in text, shown
    assert "report.html" in (classifier / "manifest.json").read_text()

    data = json.loads(result.json.read_text())
    summary = data["summary"]
    assert (summary["model"], summary["parameters"], summary["macs"]) == ("cnn", 1034, 7584)  # the tiny CNN on 8x8 digits
    assert summary["rows"] == {"train": 1439, "validation": 179, "test": 179}
    evaluated = json.loads((classifier / "evaluate.json").read_text())["test"]["metrics"]["accuracy"]
    assert summary["headline"] == {"metric": "accuracy", "value": evaluated, "split": "test"}
    trust = summary["trust"]
    calibration = json.loads((classifier / "calibration.json").read_text())
    assert trust["ece_calibrated"] == round(calibration["after"]["test"]["ece"], 4)
    assert trust["robust_accuracy"]["eps"] == 0.2 and trust["membership_auc"] == json.loads((classifier / "audit.json").read_text())["membership"]["auc"]
    assert data["data"]["class_balance"]["test"]["0"] == 18 and sum(data["data"]["class_balance"]["train"].values()) == 1439
    mistakes = data["evaluation"]["mistakes"]
    assert 0 < len(mistakes) <= 8 and all(m["true"] != m["predicted"] for m in mistakes)
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
    assert data["training"]["curves"]["train_loss"][0][0] == 4 and data["training"]["curves"]["validation_accuracy"]
    env = data["environment"]
    assert env["versions"]["torch"].startswith("2.") and len(env["manifest_sha256"]) == 64 and "model:" in env["config"]
    assert "pictures" not in data


def test_the_report_can_go_elsewhere(classifier: Path, tmp_path: Path):
    result = report(classifier, out=tmp_path / "review" / "digits.html")
    assert result.html.is_file() and (tmp_path / "review" / "digits.json").is_file()
    parse(result.html)


def test_stages_that_do_not_apply_say_so(tmp_path: Path):
    rows = np.random.default_rng(0).normal(size=(120, 3))
    lines = ["a,b,y"] + [f"{a:.4f},{b:.4f},{2 * a - b + 0.1 * c:.4f}" for a, b, c in rows]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    config = tiny_config(
        data={
            "source": {"type": "csv", "path": str(tmp_path / "table.csv")},
            "features": [{"type": "number", "name": "a"}, {"type": "number", "name": "b"}],
            "target": {"type": "number", "name": "y"},
        },
        model={"type": "mlp", "hidden": [8]},
        train={"epochs": 5, "batch_size": 16, "lr": 0.01},
    )
    run_dir = forgeml.train(config, out=tmp_path / "regression", quiet=True).run_dir
    result = report(run_dir)
    page = parse(result.html)
    assert page.sections == SECTIONS
    text = " ".join(" ".join(page.text).split())
    assert text.count("Does not apply to a regression model.") == 3  # calibration, explanations, robustness
    assert set(result.missing) == {"privacy", "export"}  # evaluation: training scored the test split
    data = json.loads(result.json.read_text())
    assert data["summary"]["headline"]["metric"] == "r2"  # training scores the test split: metrics.json
    errors = data["evaluation"]["mistakes"]
    assert len(errors) == 8 and set(errors[0]["values"]) == {"a", "b"}
    assert [abs(e["error"]) for e in errors] == sorted((abs(e["error"]) for e in errors), reverse=True)
    assert "Largest errors" in text


def test_a_text_model_quotes_its_mistakes(tmp_path: Path):
    write_reviews(tmp_path / "reviews.csv", rows=120)
    config = tiny_config(
        data={
            "source": {"type": "csv", "path": str(tmp_path / "reviews.csv")},
            "features": [{"type": "text", "name": "text", "tokenizer": "word", "max_length": 16}],
            "target": {"type": "category", "name": "label"},
            "split": {"validation": 0.2, "test": 0.3},
        },
        model={"type": "rnn", "cell": "lstm", "embedding_dim": 8, "hidden_size": 8},
        train={"epochs": 1, "max_steps": 2, "batch_size": 16},
    )
    run_dir = forgeml.train(config, out=tmp_path / "text", quiet=True).run_dir
    data = json.loads(report(run_dir).json.read_text())
    mistakes = data["evaluation"]["mistakes"]
    assert mistakes and all(isinstance(m["text"], str) and len(m["text"].split()) >= 3 for m in mistakes)
    assert "<blockquote>" + mistakes[0]["text"].replace("'", "&#x27;") in (run_dir / "report.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed: make browser (apt-get install chromium) to render the report")
def test_the_report_renders_in_headless_chromium(classifier: Path, tmp_path: Path):
    from PIL import Image

    page = report(classifier).html
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400", f"--screenshot={shot}", page.resolve().as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    picture = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert picture.shape == (2400, 1200, 3)
    ink = picture.sum(axis=2) < 600  # text, lines and chart marks, not the white or grey page
    assert ink.mean() > 0.01 and ink[:1200].mean() > 0.005 and ink[1200:].mean() > 0.005  # a blank page has none
    colours = len(np.unique(picture.reshape(-1, 3)[::37], axis=0))
    assert colours > 50  # the embedded charts and digits are drawn, not only text
