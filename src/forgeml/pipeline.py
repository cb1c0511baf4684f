"""``forgeml pipeline CONFIG``: train, then every later stage, into one run directory.

The stages (``pipeline.stages`` in the config; by default those that apply to the task) run in
order: train -> evaluate -> calibrate -> explain -> attack -> audit -> export -> report. Each finished
stage is recorded in the run's ``pipeline.json`` with a key made of what it depends on (the model's
weights, its settings and, for the report, the other stages' results). Run the pipeline again and a
stage whose key is unchanged and whose output files still match the manifest is skipped; change a
stage's settings and only it and the report run again. An interrupted training run is resumed from
its newest checkpoint. A stage that fails stops the pipeline; everything before it is kept.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from forgeml import locks
from forgeml.config import config_to_dict, load_config
from forgeml.errors import ForgeError, RunDirError
from forgeml.run import RunDir, check_replaceable

RECORD = "pipeline.json"
LANGUAGE_MODELLING = "language_modelling"

DEFAULT_STAGES = {
    "classification": ["train", "evaluate", "calibrate", "explain", "attack", "audit", "export", "report"],
    "regression": ["train", "evaluate", "audit", "export", "report"],
    LANGUAGE_MODELLING: ["train", "evaluate", "report"],
}
CLASSIFIER_ONLY = {"calibrate", "explain", "attack"}
NOT_EXPORTABLE = {"rnn", "attention"}  # forgeml.export.RECURRENT: on texts (packed sequences) export is left out of the defaults


@dataclass
class StageOutcome:
    """One stage of a pipeline run: ``ran`` or ``skipped`` (up to date), its time and one line of result."""

    name: str
    status: str
    seconds: float
    summary: str = ""


@dataclass
class PipelineResult:
    run_dir: Path
    stages: list[StageOutcome] = field(default_factory=list)


def task_of(cfg: Any) -> str:
    """The task a config trains for, before any data is read (built-in datasets fill in their target)."""
    if cfg.data.corpus is not None:
        return LANGUAGE_MODELLING
    return "classification" if cfg.data.target is not None and cfg.data.target.type == "category" else "regression"


def stages_for(cfg: Any, task: str) -> list[str]:
    """The stages to run: the config's list, or the task's defaults."""
    chosen = cfg.pipeline.stages
    if chosen is None:
        defaults = list(DEFAULT_STAGES[task])
        texts = any(f.type == "text" for f in cfg.data.features or [])
        return [s for s in defaults if s != "export" or not (texts and cfg.model.type in NOT_EXPORTABLE)]
    if task != "classification":
        wrong = [s for s in chosen if s in CLASSIFIER_ONLY or (task == LANGUAGE_MODELLING and s in ("audit", "export"))]
        if wrong:
            raise ForgeError(f"pipeline.stages: {', '.join(wrong)} do not apply to a {task.replace('_', ' ')} model")
    order = {name: i for i, name in enumerate(DEFAULT_STAGES["classification"])}
    return sorted(chosen, key=order.__getitem__)


def run(
    config: Any,
    out: Optional[str | Path] = None,
    overrides: Optional[list[str]] = None,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    status: Optional[Callable[[str], Any]] = None,
    quiet_training: bool = False,
    command: Optional[list[str]] = None,
) -> PipelineResult:
    """Run the pipeline a config describes.

    Args:
        config: a YAML path, a dict or a validated config.
        out: the run directory (default ``<output.dir>/<name>``).
        overrides: ``key.path=value`` strings.
        overwrite: retrain from scratch when the run exists with a different config.
        echo: where progress lines go.
        status: a context-manager factory shown while a stage works (a spinner); None: nothing.
        quiet_training: no training progress output.

    Raises:
        ForgeError: a bad config, or the stage that failed (the stages before it are kept).
    """
    cfg = load_config(config, overrides)
    task = task_of(cfg)
    stages = stages_for(cfg, task)
    from forgeml.training.job import run_path

    path = run_path(cfg, out)
    result = PipelineResult(path)
    with locks.writing(path, command, create=True):  # one writer from training to the report: no other command mixes in
        for index, name in enumerate(stages, 1):
            started = time.perf_counter()
            label = f"[{index}/{len(stages)}] {name}"
            if name == "train":
                outcome = _train(cfg, path, overwrite, echo, label, quiet_training, command)
            else:
                outcome = _stage(name, cfg, RunDir.open(path), echo, status, label)
            outcome.seconds = round(time.perf_counter() - started, 2)
            result.stages.append(outcome)
            verb = "up to date, skipped" if outcome.status == "skipped" else f"done in {outcome.seconds:.1f}s"
            echo(f"{label}: {verb}" + (f"; {outcome.summary}" if outcome.summary else ""))
    return result


# --------------------------------------------------------------------------------------------------
# training


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "pipeline"}  # later stages' settings do not change the model


def _train(cfg: Any, path: Path, overwrite: bool, echo: Callable[[str], None], label: str, quiet: bool, command: Any) -> StageOutcome:
    from forgeml.training.job import flatten, train

    resolved = _comparable(config_to_dict(cfg))
    if (path / "config.yaml").is_file() and not overwrite:
        run = RunDir.open(path)
        saved = run.read_yaml("config.yaml")
        saved = _comparable(saved) if isinstance(saved, dict) else {}
        same = saved == resolved
        if same and _finished(run):
            run.remove_leftovers()  # what a killed stage's write left; the stages after training write here again
            return StageOutcome("train", "skipped", 0.0, f"{path}/model.safetensors")
        if same and run.checkpoint_names():
            echo(f"{label}: resuming the interrupted run {path}")
            trained = train(cfg, resume=path, quiet=quiet, command=command)
            return StageOutcome("train", "ran", 0.0, _headline(trained.metrics))
        if same:  # the same run stopped before its first checkpoint: nothing in it to keep
            overwrite = True
        else:
            check_replaceable(path)  # not a run, or one holding the user's files: --overwrite would be refused too
            before, now = flatten(saved), flatten(resolved)
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            raise RunDirError(
                f"{path}: this run was trained with a different config ({', '.join(changed[:5])}); "
                f"retrain it with --overwrite, or give another --out"
            )
    echo(f"{label}: training {cfg.model.type} into {path}")
    trained = train(cfg, out=path, overwrite=overwrite, quiet=quiet, command=command)
    return StageOutcome("train", "ran", 0.0, _headline(trained.metrics))


def _finished(run: RunDir) -> bool:
    """Training wrote its final files (model, metrics, manifest) and they match the manifest."""
    try:
        run.verify(["config.yaml", "features.json", "model.safetensors", "metrics.json"])
    except RunDirError:
        return False
    return True


def _headline(metrics: dict[str, Any]) -> str:
    splits = metrics.get("splits", {})
    for split in ("test", "validation"):
        scores = splits.get(split, {})
        for name in ("accuracy", "r2", "perplexity", "loss"):
            if name in scores:
                return f"{split} {name} {scores[name]:.4f}"
    return ""


# --------------------------------------------------------------------------------------------------
# the stages after training


def _stage(name: str, cfg: Any, run: RunDir, echo: Callable[[str], None], status: Any, label: str) -> StageOutcome:
    options = getattr(cfg.pipeline, name).model_dump(mode="json") if hasattr(cfg.pipeline, name) else {}
    key = _key(run, name, options)
    record = run.read_json(RECORD) if (run / RECORD).is_file() else {}
    previous = record.get(name)
    if previous and previous.get("key") == key and _outputs_intact(run, previous.get("outputs", [])):
        return StageOutcome(name, "skipped", 0.0, previous.get("summary", ""))
    if status is not None:
        with status(f"{label}: {DESCRIPTIONS[name](options)}"):
            outputs, summary = STAGES[name](run, options)
    else:
        echo(f"{label}: {DESCRIPTIONS[name](options)}")
        outputs, summary = STAGES[name](run, options)
    record = run.read_json(RECORD) if (run / RECORD).is_file() else {}
    record[name] = {"key": key, "outputs": outputs, "summary": summary, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    run.write_json(RECORD, record)
    run.write_manifest([RECORD])
    return StageOutcome(name, "ran", 0.0, summary)


def _key(run: RunDir, name: str, options: dict[str, Any]) -> str:
    """What a stage's result depends on: the weights, its settings and, for the report, every other
    stage's result as it is now."""
    manifest = run.read_json("manifest.json").get("files", {}) if (run / "manifest.json").is_file() else {}
    depends: dict[str, Any] = {"model": manifest.get("model.safetensors"), "options": options}
    if name == "report":
        depends["results"] = {f: manifest.get(f) for f in sorted(manifest) if f.endswith(".json") and f not in ("report.json", RECORD)}
    return hashlib.sha256(json.dumps(depends, sort_keys=True).encode()).hexdigest()


def _outputs_intact(run: RunDir, outputs: list[str]) -> bool:
    """Every output file exists and (for those in the manifest) still has the sha256 recorded."""
    try:
        run.verify([o for o in outputs if "/" not in o])
    except RunDirError:
        return False
    return all((run / o).exists() for o in outputs)


def _evaluate(run: RunDir, options: dict[str, Any]) -> tuple[list[str], str]:
    from forgeml.evaluation import run as evaluate

    result = evaluate(run.path, options["split"])
    name = next((k for k in ("accuracy", "r2", "perplexity", "mse") if k in result.metrics), next(iter(result.metrics)))
    return ["evaluate.json"], f"{result.split} {name} {result.metrics[name]:.4f}"


def _calibrate(run: RunDir, options: dict[str, Any]) -> tuple[list[str], str]:
    from forgeml.calibration import run as calibrate

    result = calibrate(run.path, bins=options["bins"])
    shown = "test" if "test" in result.before else result.fitted_on
    return ["calibration.json", *result.files], (
        f"temperature {result.temperature:.3f}; {shown} ECE {result.before[shown]['ece']:.4f} -> {result.after[shown]['ece']:.4f}"
    )


def _explain(run: RunDir, options: dict[str, Any]) -> tuple[list[str], str]:
    from forgeml.explanation import applicable_methods, faithfulness, run_split
    from forgeml.predictor import load

    predictor = load(run.path)  # once, for the examples and the faithfulness check
    examples = run_split(predictor, "test", options["n"], options["method"])
    outputs = ["explain.json", *(str(Path(f).relative_to(run.path)) for e in examples.inputs for f in e.files if Path(f).is_relative_to(run.path))]
    summary = f"{options['method']} on {len(examples.inputs)} test examples"
    if options["faithfulness"]:
        methods = [m for m in options["faithfulness_methods"] if m in applicable_methods(predictor)]
        checked = faithfulness(predictor, methods, options["faithfulness_n"])
        outputs += checked.files
        better = sum(c.better_than_random for c in checked.curves)
        summary += f"; {better} of {len(checked.curves)} methods beat random deletion"
    return outputs, summary


def _attack(run: RunDir, options: dict[str, Any]) -> tuple[list[str], str]:
    from forgeml.robustness import run as attack

    result = attack(run.path, options["method"], options["eps"], options["norm"], options["steps"], None, "test", options["n"], 0)
    last = result.points[-1]
    return ["attack.json", *result.files], f"clean {result.clean_accuracy:.4f}, robust {last.robust_accuracy:.4f} at eps {last.eps:g}"


def _audit(run: RunDir, options: dict[str, Any]) -> tuple[list[str], str]:
    from forgeml.privacy import membership

    result = membership(run.path, "test", options["n"], 0)
    return ["audit.json", *result.files], f"membership AUC {result.auc:.4f}, advantage {result.advantage:.4f}"


def _export(run: RunDir, options: dict[str, Any]) -> tuple[list[str], str]:
    from forgeml.export import run as export

    result = export(run.path, quantize=options["quantize"], tolerance=options["tolerance"]).to_dict()
    rows = result.get("rows", [])
    fp32 = next((r for r in rows if "onnxruntime" in r.get("name", "") and "fp32" in r.get("name", "")), rows[0] if rows else {})
    bundle = Path(result.get("bundle", run / "export"))
    outputs = ["export.json"] + ([str(bundle.relative_to(run.path) / "model.onnx")] if bundle.is_relative_to(run.path) else [])
    return outputs, f"ONNX parity max |diff| {fp32.get('max_abs_diff', float('nan')):.2g}; bundle {bundle}"


def _report(run: RunDir, options: dict[str, Any]) -> tuple[list[str], str]:
    from forgeml.report import run as report

    result = report(run.path)
    return ["report.html", "report.json"], str(result.html)


STAGES: dict[str, Callable[[RunDir, dict[str, Any]], tuple[list[str], str]]] = {
    "evaluate": _evaluate,
    "calibrate": _calibrate,
    "explain": _explain,
    "attack": _attack,
    "audit": _audit,
    "export": _export,
    "report": _report,
}

DESCRIPTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "evaluate": lambda o: f"evaluating on the {o['split']} split",
    "calibrate": lambda o: "fitting a temperature on the validation split",
    "explain": lambda o: f"explaining {o['n']} test examples ({o['method']})" + (f", faithfulness on {o['faithfulness_n']}" if o["faithfulness"] else ""),
    "attack": lambda o: f"{o['method'].upper()} ({o['norm']}) at eps {', '.join(f'{e:g}' for e in o['eps'])} on {o['n'] or 'all'} test examples",
    "audit": lambda o: "membership-inference audit",
    "export": lambda o: f"exporting to ONNX ({'with int8' if o['quantize'] == 'int8' else 'fp32'}) and checking parity",
    "report": lambda o: "writing the report",
}
