"""Explanations: integrated gradients are complete, every method gives one score per feature for
images, tables and texts, the pictures and JSON are written, and the deletion curves tell a
faithful method from random order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, review_classifier, tiny_config, write_reviews

import forgeml
from forgeml.attribution import METHODS, attribute
from forgeml.errors import ConfigError, DataError
from forgeml.explanation import Explained, _text_page, faithfulness, run

pytestmark = pytest.mark.usefixtures("single_thread_torch")

SEVEN = REPO / "examples" / "data" / "digits" / "seven.png"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory, single_thread_torch: None) -> Path:
    config = tiny_config(train={"epochs": 3, "batch_size": 32, "lr": 0.01})
    return forgeml.train(config, out=tmp_path_factory.mktemp("digits") / "run", quiet=True).run_dir


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory, single_thread_torch: None) -> Path:
    config = {"data": {"source": "breast_cancer"}, "model": {"type": "mlp", "hidden": [16]}, "train": {"epochs": 3}}
    return forgeml.train(config, out=tmp_path_factory.mktemp("table") / "run", quiet=True).run_dir


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, single_thread_torch: None) -> Path:
    root = tmp_path_factory.mktemp("text")
    config = review_classifier(write_reviews(root / "reviews.csv", rows=120), {"type": "rnn", "cell": "gru", "embedding_dim": 8, "hidden_size": 8}, epochs=10)
    return forgeml.train(config, out=root / "run", quiet=True).run_dir


@pytest.mark.parametrize("fixture", ["digits_run", "table_run"])
def test_integrated_gradients_add_up_to_the_change_of_the_output(fixture: str, request: pytest.FixtureRequest):
    predictor = forgeml.load(request.getfixturevalue(fixture))
    inputs = predictor.split("test")[0][:16]
    space = predictor.attribution_space
    targets = predictor.outputs(inputs).argmax(dim=-1)
    attributions = attribute(predictor.model, space, inputs, targets, "ig")
    with torch.no_grad():
        change = (predictor.model(inputs) - predictor.model(space.baseline.expand_as(inputs))).gather(1, targets.view(-1, 1)).squeeze(1)
    total = attributions.flatten(1).sum(dim=1)
    assert torch.allclose(total, change, atol=0.02 * float(change.abs().max()) + 1e-4)  # completeness (32 Riemann steps)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_scores_each_pixel_column_and_token(method: str, digits_run: Path, table_run: Path, text_run: Path):
    image = forgeml.load(digits_run).explain([SEVEN], method)[0]
    assert image["attributions"].shape == (1, 8, 8) and image["scores"].shape == (64,) and len(image["names"]) == 64
    assert image["label"] == image["target"] and 0 < image["probability"] <= 1
    table_predictor = forgeml.load(table_run)
    row = table_predictor.explain_encoded(table_predictor.split("test")[0][:2], method) if method != "gradcam" else None
    if row is not None:
        assert row[0]["scores"].shape == (30,) and row[0]["names"][0] == "mean_radius"
    text = forgeml.load(text_run)
    if method == "gradcam":
        with pytest.raises(ConfigError, match="gradcam needs a convolutional image model"):
            text.explain([{"text": "a superb film"}], method)
        return
    explained = text.explain([{"text": "the film was superb"}], method)[0]
    assert explained["names"][:4] == ["the", "film", "was", "superb"]
    assert explained["scores"].shape == (len(explained["names"]),)
    padding = [i for i, name in enumerate(explained["names"]) if name == "[PAD]"]
    assert padding and all(abs(float(explained["scores"][i])) < 1e-6 or method == "saliency" for i in padding)


def test_an_unknown_method_or_class_is_an_error(digits_run: Path):
    predictor = forgeml.load(digits_run)
    with pytest.raises(ConfigError, match="--method: 'deeplift' is not one of"):
        predictor.explain([SEVEN], "deeplift")
    with pytest.raises(DataError, match="--target: 'eleven' is not a class"):
        predictor.explain([SEVEN], "ig", target="eleven")


def test_explain_writes_a_picture_and_json_per_input(digits_run: Path, text_run: Path, table_run: Path, tmp_path: Path):
    result = run(digits_run, [SEVEN], "ig", label="7")
    (entry,) = result.inputs
    assert entry.target == "7" and entry.files[1].endswith("000_seven_png_ig.png")
    raw = json.loads(Path(entry.files[0]).read_text())
    assert raw["target"] == "7" and len(raw["scores"]) == 64 and len(raw["attributions"][0]) == 8
    assert Path(entry.files[1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((digits_run / "explain.json").read_text())["ig"]["inputs"][0]["target"] == "7"

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a superb <b>moving</b> film"}\n')
    page = Path(run(text_run, [rows], "occlusion", out=tmp_path / "pages").inputs[0].files[1])
    content = page.read_text()
    assert page.parent == tmp_path / "pages" and "<b>" not in content and "superb" in content
    assert "http" not in content and "top tokens" in content
    entry = Explained("x", "fresh", "fresh", 0.9, [("<script>", 1.0)], [])
    assert "<script>" not in _text_page(["<script>", "[PAD]"], torch.tensor([1.0, 0.0]), entry, "ig")  # tokens are escaped

    table = forgeml.load(table_run)
    features = table.features.columns
    csv_file = tmp_path / "row.csv"
    test_rows = table.split("test")[2]
    csv_file.write_text(",".join(features) + "\n" + ",".join(str(test_rows.columns[c][0]) for c in features) + "\n")
    bars = run(table, [csv_file], "shap").inputs[0]
    assert bars.input.endswith("row.csv:2") and Path(bars.files[1]).read_bytes()[:4] == b"\x89PNG"


def test_deletion_curves_find_integrated_gradients_faithful(digits_run: Path):
    result = faithfulness(digits_run, ["ig", "gradcam"], limit=60, steps=10)
    by_method = {curve.method: curve for curve in result.curves}
    ig = by_method["ig"]
    assert ig.fractions[0] == 0 and ig.fractions[-1] == 1 and len(ig.probability) == 11
    assert ig.probability[0] > ig.probability[-1]
    assert ig.better_than_random and ig.auc < ig.random_auc
    assert ig.auc == pytest.approx(0.0955, abs=0.02) and ig.random_auc == pytest.approx(0.3859, abs=0.03)  # pinned on this seed
    assert result.flagged == [c.method for c in result.curves if not c.better_than_random]
    saved = json.loads((digits_run / "explain.json").read_text())["faithfulness"]
    assert saved["rows"] == 60 and (digits_run / "explain_faithfulness.png").is_file()
