"""One self-contained HTML report per run, and its machine-readable twin ``report.json``.

The report reads what the stages left in the run directory (metrics.json, history.jsonl,
evaluate.json, calibration.json, explain.json, attack.json, audit.json, export.json and their
pictures) and puts it side by side. It computes only what no stage stores: the model's size in
parameters and multiply-accumulates, the class balance of the splits and the test split's most
confident mistakes. A stage that has not run gets a one-line note with the command that runs it.

    forgeml report runs/mnist_cnn          # runs/mnist_cnn/report.html and report.json
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from forgeml import locks
from forgeml.errors import DataError
from forgeml.files import atomic_write
from forgeml.predictor import LANGUAGE_MODELLING, Predictor, load, model_sha256
from forgeml.report.charts import confusion_png, curves_png, image_png, per_class_png
from forgeml.report.html import render
from forgeml.run import json_bytes, sha256_file

HTML = "report.html"
JSON = "report.json"
MISTAKES = 8
LIBRARIES = ("numpy", "torch", "transformers", "peft", "tokenizers", "captum", "opacus", "onnx", "onnxruntime", "scikit-learn", "forgeml")

# what to run when a stage's result is missing from the run
COMMANDS = {
    "evaluation": "forgeml evaluate {run}",
    "calibration": "forgeml calibrate {run}",
    "explanations": "forgeml explain {run} --faithfulness",
    "robustness": "forgeml attack {run}",
    "privacy": "forgeml audit {run}",
    "export": "forgeml export {run}",
}


@dataclass
class ReportResult:
    """Where the report went and which sections it holds (the others carry a note instead)."""

    html: Path
    json: Path
    sections: list[str]
    missing: dict[str, str]
    seconds: float


@locks.writes_run
def run(target: str | Path | Predictor, out: Optional[str | Path] = None) -> ReportResult:
    """Write the report of a run.

    Args:
        target: a run directory or a Predictor from ``forgeml.load``.
        out: the HTML file (default RUN/report.html); report.json goes beside it.

    Raises:
        ForgeError: the run cannot be loaded.
    """
    started = time.perf_counter()
    predictor = target if isinstance(target, Predictor) else load(target)
    report = collect(predictor)
    html_path = Path(out) if out is not None else predictor.run / HTML
    json_path = html_path.with_suffix(".json") if out is not None else predictor.run / JSON
    html_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(json_path, json_bytes({k: v for k, v in report.items() if k != "pictures"}))
    atomic_write(html_path, render(report).encode())
    inside = [p.name for p in (html_path, json_path) if p.resolve().parent == predictor.run.path.resolve()]
    if inside:
        predictor.run.write_manifest(inside)
    sections = [name for name in ("summary", "data", "training", "evaluation", *COMMANDS, "environment") if report.get(name) is not None]
    return ReportResult(html_path, json_path, list(dict.fromkeys(sections)), report["missing"], round(time.perf_counter() - started, 3))


# --------------------------------------------------------------------------------------------------
# collecting


def collect(predictor: Predictor) -> dict[str, Any]:
    """The report as plain data: every section, the notes for missing ones, and the pictures (PNG
    bytes, which the HTML embeds and report.json leaves out)."""
    run = predictor.run
    split = functools.cache(predictor.split)  # each split is encoded once, whichever sections read it
    metrics = run.read_json("metrics.json") if (run / "metrics.json").is_file() else {}
    stage = {name: _read(predictor, name) for name in ("evaluate.json", "calibration.json", "explain.json", "attack.json", "audit.json", "export.json")}
    pictures: dict[str, bytes] = {}
    report: dict[str, Any] = {"run": str(run.path), "generated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    report["data"] = _data(predictor, split)
    report["training"] = _training(predictor, metrics, pictures)
    report["evaluation"] = _evaluation(predictor, metrics, stage["evaluate.json"], pictures, split)
    report["calibration"] = _calibration(predictor, stage["calibration.json"], pictures)
    report["explanations"] = _explanations(predictor, stage["explain.json"], pictures)
    report["robustness"] = _robustness(predictor, stage["attack.json"], pictures)
    report["privacy"] = _privacy(predictor, metrics, stage["audit.json"], pictures)
    report["export"] = stage["export.json"].get("onnx") if stage["export.json"] else None
    report["environment"] = _environment(predictor, metrics)
    report["summary"] = _summary(predictor, metrics, report, None if predictor.task == LANGUAGE_MODELLING else split("test")[0][:1])
    applies = _applicable(predictor)
    report["missing"] = {
        name: command.format(run=run.path) for name, command in COMMANDS.items() if report.get(name) is None and name in applies
    }
    report["not_applicable"] = [name for name in COMMANDS if name not in applies]
    report["pictures"] = pictures
    return report


def _read(predictor: Predictor, name: str) -> Optional[dict[str, Any]]:
    return predictor.run.read_json(name) if (predictor.run / name).is_file() else None


def _applicable(predictor: Predictor) -> set[str]:
    """The stages that apply to this kind of model."""
    if predictor.task == LANGUAGE_MODELLING:
        return {"evaluation"}
    if predictor.task == "classification":
        return set(COMMANDS)
    return {"evaluation", "privacy", "export"}


def _picture(predictor: Predictor, name: str, pictures: dict[str, bytes]) -> Optional[str]:
    """Embed a stage's PNG from the run (by its name in the stage result); None if it is gone."""
    for path in (predictor.run / name, predictor.run / "explanations" / Path(name).name, Path(name)):
        if path.is_file() and path.suffix == ".png":
            key = f"file:{path.name}"
            pictures[key] = path.read_bytes()
            return key
    return None


def _data(predictor: Predictor, split: Callable[[str], Any]) -> dict[str, Any]:
    config = predictor.config
    state = predictor.run.read_json("features.json")
    data: dict[str, Any] = {
        "source": config.data.source.model_dump(mode="json"),
        "rows": state.get("splits", {}).get("rows", {}),
        "skipped_rows": state.get("skipped_rows", 0),
        "model_input": dict(state.get("input", {})),
        "split": config.data.split.model_dump(mode="json"),
    }
    if predictor.task == LANGUAGE_MODELLING:
        data["preprocessing"] = [{"column": config.data.corpus.column, "type": "corpus", "tokenizer": config.data.corpus.tokenizer}]
        return data
    data["preprocessing"] = [_describe_feature(f) for f in state.get("inputs", [])]
    data["target"] = _describe_feature(state["target"]) if state.get("target") else None
    if predictor.task == "classification":
        balance = {}
        for name in ("train", "validation", "test"):
            try:
                targets = split(name)[1].numpy()
            except DataError:  # an empty split
                continue
            counts = np.bincount(targets, minlength=len(predictor.label_names))
            balance[name] = {label: int(c) for label, c in zip(predictor.label_names, counts)}
        data["class_balance"] = balance
    return data


def _describe_feature(feature: dict[str, Any]) -> dict[str, Any]:
    """A feature's config and the short facts of its fitted state (not whole vocabularies)."""
    config, state = feature.get("config", {}), feature.get("state", {})
    facts: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, list) and len(value) > 8:
            facts[f"{key}_size"] = len(value)
        elif isinstance(value, (int, float, str, bool)) or (isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value)):
            facts[key] = [round(v, 6) if isinstance(v, float) else v for v in value] if isinstance(value, list) else value
    return {"column": config.get("name"), "type": config.get("type"), "config": {k: v for k, v in config.items() if k not in ("name", "type")}, "fitted": facts}


def _training(predictor: Predictor, metrics: dict[str, Any], pictures: dict[str, bytes]) -> Optional[dict[str, Any]]:
    history = predictor.run.read_history()
    train = [r for r in history if r.get("split") == "train"]
    validation = [r for r in history if r.get("split") == "validation"]
    summary = metrics.get("training", {})
    monitor = summary.get("monitor", "loss")
    curves = {
        "train_loss": [[r["step"], r["loss"]] for r in train if "loss" in r],
        "validation_loss": [[r["step"], r["loss"]] for r in validation if "loss" in r],
        "lr": [[r["step"], r["lr"]] for r in train if "lr" in r],
    }
    shown = monitor if monitor != "loss" else next((k for k in ("accuracy", "r2", "perplexity") if validation and k in validation[-1]), None)
    if shown:
        curves[f"validation_{shown}"] = [[r["step"], r[shown]] for r in validation if shown in r]
    if train or validation:
        pictures["curves"] = curves_png(curves, shown, summary.get("best_step"))
    return {
        **{k: summary.get(k) for k in ("steps", "total_steps", "epochs", "examples", "seconds", "device", "processes", "best_step", "best_value", "monitor", "stopped_early")},
        "parameters": summary.get("parameters"),
        "optimizer": predictor.config.train.optimizer,
        "lr": predictor.config.train.lr,
        "schedule": predictor.config.train.schedule,
        "batch_size": predictor.config.train.batch_size,
        "curves": curves,
    }


def _evaluation(
    predictor: Predictor, metrics: dict[str, Any], evaluated: Optional[dict[str, Any]], pictures: dict[str, bytes], split: Callable[[str], Any]
) -> Optional[dict[str, Any]]:
    if evaluated and "test" in evaluated:
        result, source = dict(evaluated["test"]), "evaluate.json"
    elif "test" in metrics.get("splits", {}):  # the end of training scores the test split too
        scores = dict(metrics["splits"]["test"])
        confusion = scores.pop("confusion_matrix", None)
        result, source = {"split": "test", "task": predictor.task, "metrics": scores, "confusion_matrix": confusion, "label_names": predictor.label_names}, "metrics.json"
        if confusion is not None:
            from forgeml.metrics import per_class_scores

            result["per_class"] = per_class_scores(confusion, predictor.label_names)
    else:
        return None
    result["source"] = source
    if result.get("confusion_matrix") is not None:
        pictures["confusion"] = confusion_png(result["confusion_matrix"], result["label_names"])
        pictures["per_class"] = per_class_png(result["per_class"])
    if predictor.task != LANGUAGE_MODELLING:
        result["mistakes"] = _mistakes(predictor, pictures, split("test"))
    return result


def _mistakes(predictor: Predictor, pictures: dict[str, bytes], test: tuple[torch.Tensor, torch.Tensor, Any]) -> list[dict[str, Any]]:
    """The test split's most confident wrong predictions (classification) or largest errors
    (regression), with what a person needs to look at them."""
    inputs, targets, table = test
    outputs = predictor.outputs(inputs)
    if predictor.task == "classification":
        probabilities = torch.softmax(outputs / predictor.temperature, -1)
        confidence, predicted = probabilities.max(-1)
        wrong = torch.nonzero(predicted != targets).flatten()
        order = wrong[torch.argsort(confidence[wrong], descending=True)][:MISTAKES]
    else:
        values = predictor.features.decode_regression(outputs.numpy().reshape(-1))
        truth = predictor.features.decode_regression(targets.numpy().reshape(-1))
        order = torch.from_numpy(np.argsort(-np.abs(values - truth), kind="stable")[:MISTAKES].copy())
    spec = predictor.features.input_spec
    items = []
    for rank, index in enumerate(order.tolist()):
        item: dict[str, Any] = {"where": table.where(index)}
        if predictor.task == "classification":
            item |= {
                "true": predictor.label_names[int(targets[index])],
                "predicted": predictor.label_names[int(predicted[index])],
                "probability": round(float(confidence[index]), 4),
            }
        else:
            item |= {"true": float(truth[index]), "predicted": float(values[index]), "error": float(values[index] - truth[index])}
        if spec.kind == "image":
            key = f"mistake_{rank}"
            pictures[key] = image_png(inputs[index], predictor.features.image_normalisation)
            item["picture"] = key
        elif spec.kind == "tokens":
            item["text"] = str(table.columns[predictor.features.columns[0]][index])
        else:
            item["values"] = {name: _plain(table.columns[name][index]) for name in predictor.features.columns if name in table.columns}
        items.append(item)
    return items


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _calibration(predictor: Predictor, result: Optional[dict[str, Any]], pictures: dict[str, bytes]) -> Optional[dict[str, Any]]:
    if result is None:
        return None
    result = dict(result)
    result["current"] = result.get("model_sha256") == model_sha256(predictor.run)
    result["pictures"] = [key for key in (_picture(predictor, name, pictures) for name in result.get("files", [])) if key]
    return result


def _explanations(predictor: Predictor, result: Optional[dict[str, Any]], pictures: dict[str, bytes]) -> Optional[dict[str, Any]]:
    if result is None:
        return None
    out: dict[str, Any] = {"methods": {}, "faithfulness": None}
    for name, entry in result.items():
        if name == "faithfulness":
            out["faithfulness"] = {
                **{k: entry.get(k) for k in ("split", "rows", "steps")},
                "curves": [{k: c.get(k) for k in ("method", "auc", "random_auc", "improvement", "standard_error", "better_than_random")} for c in entry.get("curves", [])],
                "pictures": [key for key in (_picture(predictor, f, pictures) for f in entry.get("files", [])) if key],
            }
            continue
        inputs = []
        for item in entry.get("inputs", [])[:6]:
            inputs.append(
                {
                    **{k: item.get(k) for k in ("input", "label", "target", "probability")},
                    "top": item.get("top", [])[:8],
                    "pictures": [key for key in (_picture(predictor, f, pictures) for f in item.get("files", [])) if key],
                }
            )
        out["methods"][name] = {"kind": entry.get("kind"), "inputs": inputs}
    return out


def _robustness(predictor: Predictor, result: Optional[dict[str, Any]], pictures: dict[str, bytes]) -> Optional[dict[str, Any]]:
    if result is None:
        return None
    attacks = {}
    for name, entry in result.items():
        attacks[name] = {k: v for k, v in entry.items() if k != "files"}
        attacks[name]["pictures"] = [key for key in (_picture(predictor, f, pictures) for f in entry.get("files", [])) if key]
    return {"attacks": attacks}


def _privacy(predictor: Predictor, metrics: dict[str, Any], audit: Optional[dict[str, Any]], pictures: dict[str, bytes]) -> Optional[dict[str, Any]]:
    dp = metrics.get("privacy")
    membership = dict(audit["membership"]) if audit and "membership" in audit else None
    if dp is None and membership is None:
        return None
    if membership is not None:
        membership["pictures"] = [key for key in (_picture(predictor, f, pictures) for f in membership.pop("files", [])) if key]
    return {"differential_privacy": dp, "membership": membership}


def _environment(predictor: Predictor, metrics: dict[str, Any]) -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    manifest = predictor.run / "manifest.json"
    trained = metrics.get("environment", {})
    return {
        "versions": versions,
        "trained_with": {k: trained.get(k) for k in ("python", "torch", "platform")},
        "command": trained.get("command"),
        "device": metrics.get("training", {}).get("device"),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "manifest_sha256": sha256_file(manifest),
        "model_sha256": model_sha256(predictor.run),
        "config": (predictor.run / "config.yaml").read_text(encoding="utf-8"),
    }


def model_size(predictor: Predictor, example: Optional[torch.Tensor] = None) -> dict[str, Optional[int]]:
    """Parameters, and multiply-accumulates for one example (torch's FLOP counter over one forward
    pass: matrix multiplies, convolutions and attention; recurrences it does not count show as 0).
    ``example``: one encoded input (default: the first of the test split)."""
    parameters = sum(p.numel() for p in predictor.model.parameters())
    macs: Optional[int] = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        if predictor.task == LANGUAGE_MODELLING:
            example = torch.zeros(1, min(predictor.features.context, 64), dtype=torch.long)
        elif example is None:
            example = predictor.split("test")[0][:1]
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            predictor.model(example.to(predictor.device))
        macs = int(counter.get_total_flops() // 2)
    except Exception:  # a model the counter cannot follow: the size is still given  # noqa: BLE001
        macs = None
    return {"parameters": int(parameters), "macs": macs}


def _summary(predictor: Predictor, metrics: dict[str, Any], report: dict[str, Any], example: Optional[torch.Tensor]) -> dict[str, Any]:
    evaluation = report["evaluation"] or {}
    scores = evaluation.get("metrics", {})
    headline_name = next((k for k in ("accuracy", "r2", "perplexity", "mse") if k in scores), None)
    trust: dict[str, Any] = {}
    if report["calibration"]:
        test = report["calibration"]["after"].get("test") or next(iter(report["calibration"]["after"].values()))
        trust["ece_calibrated"] = round(test["ece"], 4)
        trust["ece_uncalibrated"] = round((report["calibration"]["before"].get("test") or next(iter(report["calibration"]["before"].values())))["ece"], 4)
    if report["robustness"]:
        attack = next(iter(report["robustness"]["attacks"].values()))
        last = attack["points"][-1]
        trust["robust_accuracy"] = {"value": round(last["robust_accuracy"], 4), "eps": last["eps"], "attack": f"{attack['method']} {attack['norm']}"}
    if report["privacy"]:
        if report["privacy"]["membership"]:
            trust["membership_auc"] = report["privacy"]["membership"]["auc"]
        if report["privacy"]["differential_privacy"]:
            trust["epsilon"] = report["privacy"]["differential_privacy"]["epsilon"]
            trust["delta"] = report["privacy"]["differential_privacy"]["delta"]
    if report["explanations"] and report["explanations"]["faithfulness"]:
        curves = report["explanations"]["faithfulness"]["curves"]
        trust["faithful_methods"] = f"{sum(bool(c['better_than_random']) for c in curves)} of {len(curves)}"
    if report["export"]:
        rows = report["export"].get("rows", [])
        fp32 = next((r for r in rows if "fp32" in r.get("name", "") and "torch" not in r.get("name", "")), None)
        if fp32 is not None:
            trust["export_max_abs_diff"] = fp32.get("max_abs_diff")
    model_type = predictor.config.model.type
    return {
        "task": predictor.task,
        "model": model_type,
        **model_size(predictor, example),
        "rows": report["data"]["rows"],
        "headline": {"metric": headline_name, "value": scores.get(headline_name), "split": "test"} if headline_name else None,
        "trust": trust,
    }
