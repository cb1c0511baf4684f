"""The command line: one thin function per command; each imports its stage lazily.

A user error (ForgeError) prints one line on stderr and exits with code 2; ``--debug`` shows the
traceback instead. Ctrl-C exits 130 and SIGTERM 143 (``forgeml.signals``), both after the
interrupted command has cleaned up: a stopped training run keeps its checkpoints and says how to
resume it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from forgeml.errors import ForgeError
from forgeml.signals import EXIT_CODE as TERMINATED
from forgeml.signals import Terminated, sigterm_raises

app = typer.Typer(
    name="forgeml",
    help="From a dataset to a trained, evaluated, explained, hardened and exported model. Start with: forgeml train examples/mnist_cnn.yaml, "
    "or all stages at once: forgeml pipeline examples/mnist_cnn.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Check, show and describe experiment configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
data_app = typer.Typer(help="Look at the data a config describes; scrub personal data out of a file.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_state = {"debug": False}

SetOption = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config value: --set train.lr=0.01 (repeatable).")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"forgeml {version('forgeml')}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


# --------------------------------------------------------------------------------------------------
# train / evaluate / predict


@app.command()
def train(
    config: Path = typer.Argument(..., metavar="CONFIG", help="Experiment config (YAML)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Run directory (default: <output.dir>/<name>)."),
    overrides: Optional[List[str]] = SetOption,
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN", help="Continue this run from its newest complete checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    nproc: int = typer.Option(1, "--nproc", metavar="N", min=1, help="Processes on this machine (one per GPU): runs under torchrun with DDP."),
    nnodes: int = typer.Option(1, "--nnodes", metavar="N", min=1, help="Machines taking part (each runs the same command)."),
    node_rank: Optional[int] = typer.Option(
        None, "--node-rank", metavar="R", min=0, help="This machine's number, 0 to nnodes-1 (fixed ranks; the endpoint is node 0's address)."
    ),
    rdzv_endpoint: Optional[str] = typer.Option(
        None, "--rdzv-endpoint", metavar="HOST:PORT", help="Where the machines meet: a host all of them reach and a free port on it."
    ),
) -> None:
    """Train a model and write a run directory.

    train.batch_size is the global batch: with --nproc N (times --nnodes) each process takes an
    equal share of every batch, so the result does not depend on the number of processes.

    Two machines with 8 GPUs each (run on both; HOST is the first machine's address):

        forgeml train CONFIG --nproc 8 --nnodes 2 --rdzv-endpoint HOST:29500

    Add --node-rank 0 on HOST and --node-rank 1 on the other for fixed machine numbers.
    """
    from forgeml.training.job import train as run_training

    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise ForgeError("give either --out (a new run) or --resume (an existing run), not both")
    if nproc > 1 or nnodes > 1:
        arguments = [str(config)] + (["--out", str(out)] if out is not None else [])
        arguments += [f"--set={item}" for item in overrides or []]
        arguments += (["--resume", str(resume)] if resume is not None else []) + (["--overwrite"] if overwrite else [])
        raise typer.Exit(_torchrun(arguments, config, overrides or [], nproc, nnodes, node_rank, rdzv_endpoint))
    run_training(config, out=out, overrides=overrides or [], resume=resume, overwrite=overwrite, command=["forgeml", *sys.argv[1:]])


@app.command()
def pipeline(
    config: Path = typer.Argument(..., metavar="CONFIG", help="Experiment config (YAML); its pipeline section chooses the stages."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Run directory (default: <output.dir>/<name>)."),
    overrides: Optional[List[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain from scratch when the run exists with another config."),
) -> None:
    """Every stage in one command: train, evaluate, calibrate, explain, attack, audit, export and
    report, into one run directory.

    The stages come from the config's pipeline.stages (default: those that apply to the task).
    Run it again and every stage whose result is up to date is skipped; change one stage's
    settings (--set pipeline.attack.eps=[0.1]) and only it and the report run again. An interrupted
    training run is resumed.
    """
    from rich.console import Console

    from forgeml.pipeline import run as run_pipeline

    console = Console(stderr=False)
    spinner = (lambda text: console.status(text, spinner="dots")) if console.is_terminal else None
    result = run_pipeline(
        config, out=out, overrides=overrides or [], overwrite=overwrite, echo=lambda text: typer.echo(text), status=spinner,
        command=["forgeml", *sys.argv[1:]],
    )
    ran = sum(s.status == "ran" for s in result.stages)
    line = f"{result.run_dir}: {ran} stage(s) ran, {len(result.stages) - ran} up to date"
    if any(s.name == "report" for s in result.stages):
        line += f"; report: {result.run_dir / 'report.html'}"
    typer.echo(line)


def _torchrun(
    arguments: list[str], config: Path, overrides: list[str], nproc: int, nnodes: int, node_rank: Optional[int], endpoint: Optional[str]
) -> int:
    """Run ``forgeml train ARGUMENTS`` under torchrun (``python -m torch.distributed.run``); its exit code."""
    import subprocess

    from forgeml.config import load_config
    from forgeml.training.job import per_rank_batch_size

    # the user's mistakes, once, before any process starts
    per_rank_batch_size(load_config(config, overrides).train.batch_size, nproc * nnodes)
    if nnodes > 1 and endpoint is None:
        raise ForgeError("--nnodes: training on several machines needs --rdzv-endpoint HOST:PORT (a host all of them reach)")
    if node_rank is not None and node_rank >= nnodes:
        raise ForgeError(f"--node-rank: {node_rank} is not below --nnodes {nnodes}")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and endpoint is None:
        launch += ["--standalone"]
    elif node_rank is not None:  # fixed machine numbers: node 0 hosts the rendezvous at the endpoint
        host, _, port = endpoint.rpartition(":") if endpoint else ("", "", "")
        launch += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--master-addr", host, "--master-port", port]
    else:  # machines are numbered as they arrive
        launch += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", str(endpoint), "--rdzv-id", "forgeml"]
    debug = ["--debug"] if _state["debug"] else []
    process = subprocess.Popen([*launch, "-m", "forgeml", *debug, "train", *arguments])
    try:
        return process.wait()
    except Terminated:  # torchrun passes SIGTERM on to every worker, which stops as one process does
        process.terminate()
        process.wait()
        raise
    except BaseException:  # Ctrl-C reached torchrun and its workers too; what subprocess.call did
        process.kill()
        process.wait()
        raise


@app.command()
def evaluate(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
    split: str = typer.Option("test", "--split", metavar="SPLIT", help="train, validation or test."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Evaluate a run on a split (test by default).

    Classification: accuracy, macro precision / recall / F1 and the confusion matrix.
    Regression: MSE, MAE and R². The result is also saved as evaluate.json in the run.
    """
    from forgeml.evaluation import run as run_evaluation

    result = run_evaluation(run, split)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_evaluation(result, run)


def _print_evaluation(result: Any, run: Path) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    console.print(f"{run}: {result.split} split, {result.rows:,} examples")
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    if result.confusion_matrix is not None and len(result.label_names) <= 20:
        matrix = Table(title="confusion matrix (rows: true, columns: predicted)", box=box.SIMPLE_HEAD, padding=(0, 1))
        matrix.add_column("")
        for name in result.label_names:
            matrix.add_column(name, justify="right")
        matrix.add_column("recall", justify="right")
        for name, row in zip(result.label_names, result.confusion_matrix):
            matrix.add_row(name, *(str(v) for v in row), f"{result.per_class[name]['recall']:.3f}")
        matrix.add_row("prec.", *(f"{result.per_class[n]['precision']:.2f}" for n in result.label_names), "")
        console.print(matrix)


@app.command()
def calibrate(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory of a classifier."),
    split: str = typer.Option("validation", "--split", metavar="SPLIT", help="The split the temperature is fitted on."),
    bins: int = typer.Option(15, "--bins", min=2, metavar="N", help="Confidence bins of the ECE and the reliability diagram."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fit a temperature so that a classifier's probabilities match its accuracy (temperature
    scaling, on the validation split), show the expected calibration error (ECE) before and after, and store the temperature
    in the run, where forgeml.load, predict and serve apply it. Predicted classes do not change.
    Writes calibration.json and calibration.png (reliability diagrams)."""
    from forgeml.calibration import run as run_calibration

    result = run_calibration(run, split, bins)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    softer = "softens an over-confident model" if result.temperature > 1 else "sharpens an under-confident model"
    typer.echo(f"{run}: temperature {result.temperature:.4f} fitted on {result.rows:,} {result.fitted_on} examples ({softer})")
    typer.echo(f"  {'split':<11} {'ECE before':>10} {'ECE after':>10} {'NLL before':>11} {'NLL after':>10} {'accuracy':>9}")
    for name, before in result.before.items():
        after = result.after[name]
        typer.echo(f"  {name:<11} {before['ece']:10.4f} {after['ece']:10.4f} {before['nll']:11.4f} {after['nll']:10.4f} {before['accuracy']:9.4f}")
    typer.echo(f"written: {', '.join(str(Path(run) / f) for f in ['calibration.json', *result.files])}")


@app.command()
def report(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="The HTML file (default: RUN/report.html); report.json goes beside it."),
) -> None:
    """Write one self-contained HTML page of everything the run holds: summary, data, training curves,
    evaluation (confusion matrix, most confident mistakes), calibration, explanations, robustness,
    privacy, export and environment. A stage that has not run shows the command that runs it.
    Also writes report.json, the same content for programs."""
    from forgeml.report import run as run_report

    result = run_report(run, out)
    typer.echo(f"{run}: report with {', '.join(result.sections)}")
    for name, command in result.missing.items():
        typer.echo(f"  {name} not run yet: {command}")
    typer.echo(f"written: {result.html}, {result.json}")


@app.command()
def predict(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
    inputs: List[Path] = typer.Argument(..., metavar="INPUT...", help="A CSV, JSON Lines or Parquet file with the input columns, or image files."),
    allow_outside: bool = typer.Option(
        False, "--allow-outside", help="Read image paths in a data file that lead out of its folder (absolute, .., symlinks)."
    ),
) -> None:
    """Predict a CSV, JSON Lines or Parquet file, or image files; one JSON object per line.

    Each line holds the input, then the label and class probabilities (classification) or the value
    (regression). Image paths inside a data file are read relative to it and must stay in its folder
    unless --allow-outside is given.
    """
    from forgeml.data.sources import IMAGE_SUFFIXES
    from forgeml.predictor import load

    predictor = load(run)
    rows, predictions = predictor.predict_rows([str(p) for p in inputs], allow_outside)
    images = all(p.suffix.lower() in IMAGE_SUFFIXES for p in inputs)
    for index, prediction in enumerate(predictions):
        origin = rows.origins[rows.origin_index[index]]
        source = origin if images else f"{origin}:{int(rows.line[index])}"  # a file, or file:line of a CSV row
        typer.echo(json.dumps({"input": source, **prediction}))


@app.command()
def generate(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory of a language model."),
    prompt: str = typer.Option(..., "--prompt", metavar="TEXT", help="The text to continue."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", min=1, metavar="N", help="Tokens to generate at most."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, metavar="T", help="Sampling temperature; 0 is greedy."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, metavar="K", help="Sample from the K most likely tokens only."),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0, metavar="P", help="Sample from the smallest set of tokens with probability >= P."),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="S", help="Seed: the same seed gives the same text."),
) -> None:
    """Continue a prompt with a language model, printing tokens as they come."""
    from forgeml.predictor import load

    predictor = load(run)
    sys.stdout.write(prompt)
    for piece in predictor.generate_stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


# --------------------------------------------------------------------------------------------------
# trust: attack / audit


@app.command()
def attack(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory of a classifier."),
    method: str = typer.Option("pgd", "--method", metavar="fgsm|pgd", help="fgsm: one signed-gradient step; pgd: projected gradient descent."),
    eps: str = typer.Option("0.05,0.1,0.2,0.3", "--eps", metavar="E1,E2,...", help="Radii of the perturbation (images: pixel units in [0, 1])."),
    norm: str = typer.Option("linf", "--norm", metavar="linf|l2", help="The norm the radius is measured in."),
    steps: int = typer.Option(20, "--steps", min=1, metavar="N", help="PGD steps."),
    alpha: Optional[float] = typer.Option(None, "--alpha", min=0.0, metavar="A", help="PGD step size (default 2.5 x eps / steps)."),
    split: str = typer.Option("test", "--split", metavar="SPLIT", help="train, validation or test."),
    limit: Optional[int] = typer.Option(None, "--n", min=1, metavar="N", help="Attack only the first N examples of the split."),
    seed: int = typer.Option(0, "--seed", metavar="S", help="Seed of PGD's random starts."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Robust accuracy under an adversarial attack at each radius.

    Images are attacked in pixel space (clipped to [0, 1]), tables in their standardised inputs
    (clipped to the training range), texts in the token embedding space. Writes attack.json and
    PNGs of the curve (and, for images, examples) into the run.
    """
    from forgeml.robustness import parse_eps, robust_table
    from forgeml.robustness import run as run_attack

    result = run_attack(run, method, parse_eps(eps), norm, steps, alpha, split, limit, seed)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    name = "FGSM" if result.method == "fgsm" else f"PGD-{result.steps}"
    typer.echo(f"{run}: {name} ({result.norm}) on the {result.split} split, {result.rows:,} examples; perturbed in {result.space}")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("eps", "robust accuracy", "largest perturbation"):
        table.add_column(column, justify="right")
    for row in robust_table(result):
        table.add_row(*row)
    console.print(table)
    typer.echo(f"written: {', '.join([str(Path(run) / 'attack.json'), *(str(Path(run) / f) for f in result.files)])}")


@app.command()
def explain(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory of a classifier."),
    inputs: Optional[List[Path]] = typer.Argument(None, metavar="INPUT...", help="Image files, or a CSV / JSON Lines / Parquet file of rows."),
    method: str = typer.Option("ig", "--method", metavar="METHOD", help="ig, saliency, gradcam, occlusion, shap or lime."),
    label: Optional[str] = typer.Option(None, "--target", metavar="LABEL", help="The class to explain (default: the predicted one)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Folder for the pictures and JSON (default: RUN/explanations)."),
    faithful: bool = typer.Option(False, "--faithfulness", help="Measure each method's deletion curve against random order instead."),
    limit: int = typer.Option(200, "--n", min=1, metavar="N", help="--faithfulness: test examples measured."),
    methods: Optional[str] = typer.Option(None, "--methods", metavar="M1,M2", help="--faithfulness: the methods (default: all that apply)."),
    allow_outside: bool = typer.Option(
        False, "--allow-outside", help="Read image paths in a data file that lead out of its folder (absolute, .., symlinks)."
    ),
) -> None:
    """Why did the model decide this? Attributions (Captum) drawn as a heat map over an image, an
    HTML page of highlighted tokens for a text, or a bar chart of the columns of a table row, each
    with a JSON file of the raw numbers. --faithfulness checks the methods themselves: removing the
    most-attributed features first should make the prediction fall faster than removing them at random."""
    if faithful:
        from forgeml.explanation import faithfulness

        chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        result = faithfulness(run, chosen, limit)
        typer.echo(f"{run}: deletion curves on {result.rows} {result.split} examples, {result.steps} steps (a smaller area is more faithful)")
        typer.echo(f"  {'method':<10} {'area':>8} {'random':>8} {'gain':>8} {'± 2 s.e.':>9}")
        for curve in result.curves:
            verdict = "better than random" if curve.better_than_random else "FLAGGED: no better than random"
            typer.echo(
                f"  {curve.method:<10} {curve.auc:8.4f} {curve.random_auc:8.4f} {curve.improvement:8.4f} {2 * curve.standard_error:9.4f}  {verdict}"
            )
        typer.echo(f"written: {Path(run) / 'explain.json'}, {', '.join(str(Path(run) / f) for f in result.files)}")
        return
    if not inputs:
        raise ForgeError("give inputs to explain (image files, or a CSV / JSON Lines file), or --faithfulness")
    from forgeml.explanation import run as run_explain

    result = run_explain(run, [str(p) for p in inputs], method, label, out, allow_outside=allow_outside)
    for entry in result.inputs:
        top = ", ".join(f"{name} {score:+.3g}" for name, score in entry.top[:5])
        typer.echo(f"{entry.input}: {entry.target} (p {entry.probability:.3f}); strongest: {top}")
        typer.echo(f"  written: {', '.join(entry.files)}")


@app.command()
def audit(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
    membership: bool = typer.Option(True, "--membership/--no-membership", help="The loss-threshold membership-inference attack."),
    split: str = typer.Option("test", "--split", metavar="SPLIT", help="Where the non-members come from: test or validation."),
    limit: Optional[int] = typer.Option(None, "--n", min=1, metavar="N", help="Score at most N members and N non-members."),
    seed: int = typer.Option(0, "--seed", metavar="S", help="Which training examples are drawn."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Does the model leak which examples it was trained on? A loss-threshold membership-inference
    attack on training examples against held-out ones: AUC 0.5 and advantage 0 mean no leak.
    Writes audit.json and a PNG (ROC curve, loss distributions) into the run."""
    if not membership:
        raise ForgeError("nothing to audit: the membership-inference audit (--membership) is the one audit so far")
    from forgeml.privacy import membership as run_membership

    result = run_membership(run, split, limit, seed)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(
        f"{run}: membership inference (loss threshold) on {result.members:,} training and {result.non_members:,} {result.held_out} examples\n"
        f"  attack AUC {result.auc:.4f}  advantage {result.advantage:.4f} (TPR - FPR at loss threshold {result.threshold:.4g}; 0.5 and 0 are chance)\n"
        f"  mean loss: training {result.member_loss:.4f}, {result.held_out} {result.non_member_loss:.4f}"
        + (
            f"; accuracy: training {result.train_accuracy:.4f}, {result.held_out} {result.held_out_accuracy:.4f}"
            if result.train_accuracy is not None
            else ""
        )
    )
    typer.echo(f"written: {Path(run) / 'audit.json'}, {', '.join(str(Path(run) / f) for f in result.files)}")


# --------------------------------------------------------------------------------------------------
# export


@app.command()
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory of a classifier or regressor."),
    quantize: str = typer.Option("none", "--quantize", metavar="none|int8", help="Also build and verify an int8 model (the faster of dynamic and static QDQ)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="The bundle directory (default: RUN/export)."),
    tolerance: float = typer.Option(0.01, "--tolerance", min=0.0, metavar="T", help="What the int8 model may lose: accuracy (0.01: one point), or for a regressor the fraction its test MSE may rise by."),
    threads: int = typer.Option(1, "--threads", min=1, metavar="N", help="CPU threads while timing."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export the model to ONNX (dynamic batch axis, and sequence axis for texts) with its
    preprocessing state, then verify the bundle on the test split: outputs against torch, the
    metric, file size and latency at batch 1 and 32. A parity failure is an error and leaves no
    bundle. Writes the bundle (model.onnx, features.json, export.json) and RUN/export.json."""
    from forgeml.export import run as run_export

    result = run_export(run, quantize, out, tolerance, threads)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    if "p50_token_ms" in result.rows[0]:  # a language model: the graph with its key/value cache
        typer.echo(f"{run}: exported to ONNX with its key/value cache (opset {result.opset}); verified on {result.test_rows:,} test windows, {result.threads} thread(s)")
        for row in result.rows[1:]:
            typer.echo(f"  whole-window logits max |diff| {row['max_abs_diff']:.2g}, cached decode max |diff| {row['metric']:.2g}")
        typer.echo(f"  one cached step (a token): torch {result.rows[0]['p50_token_ms']:.3f} ms, onnxruntime {result.rows[1]['p50_token_ms']:.3f} ms (p50)")
        typer.echo(f"written: {result.bundle} ({', '.join(sorted(p.name for p in Path(result.bundle).iterdir()))}), {Path(run) / 'export.json'}")
        return
    typer.echo(f"{run}: exported to ONNX (opset {result.opset}); verified on {result.test_rows:,} test examples, {result.threads} thread(s)")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("runtime", "max |diff|", result.rows[0]["metric_name"], "size", "p50 b1 ms", "p95 b1 ms", "p50 b32 ms", "p95 b32 ms"):
        table.add_column(column, justify="left" if column == "runtime" else "right", no_wrap=True)
    for row in result.rows:
        table.add_row(
            row["name"], f"{row['max_abs_diff']:.2g}", f"{row['metric']:.4f}", f"{row['size_bytes'] / 1024:,.0f} KiB",
            *(f"{row[k]:.3f}" for k in ("p50_b1_ms", "p95_b1_ms", "p50_b32_ms", "p95_b32_ms")),
        )
    console.print(table)
    if result.mode:
        typer.echo(f"int8 mode: {result.mode} (the faster of the int8 models within the tolerance {tolerance})")
    if len(result.rows) > 2 and result.rows[2]["p50_b1_ms"] >= result.rows[1]["p50_b1_ms"]:
        typer.echo("note: int8 is no faster than fp32 at batch 1 on this CPU (int8 kernels gain on CPUs with VNNI instructions)")
    typer.echo(f"written: {result.bundle} ({', '.join(sorted(p.name for p in Path(result.bundle).iterdir()))}), {Path(run) / 'export.json'}")


# --------------------------------------------------------------------------------------------------
# serve


def _serve_help(name: str) -> str:
    from forgeml.serve.settings import ServeSettings

    return ServeSettings.model_fields[name].description or ""


@app.command()
def serve(
    target: str = typer.Argument(..., metavar="RUN_OR_BUNDLE", help=_serve_help("target")),
    host: str = typer.Option("127.0.0.1", "--host", help=_serve_help("host")),
    port: int = typer.Option(8000, "--port", help=_serve_help("port")),
    backend: Optional[str] = typer.Option(None, "--backend", metavar="torch|onnx", help=_serve_help("backend")),
    name: Optional[str] = typer.Option(None, "--name", help=_serve_help("name")),
    max_batch: int = typer.Option(16, "--max-batch", metavar="N", help=_serve_help("max_batch")),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", metavar="MS", help=_serve_help("max_wait_ms")),
    max_queue: int = typer.Option(100, "--max-queue", metavar="N", help=_serve_help("max_queue")),
    max_body_bytes: str = typer.Option("10MiB", "--max-body-bytes", metavar="SIZE", help=_serve_help("max_body_bytes")),
    max_text_chars: int = typer.Option(100_000, "--max-text-chars", metavar="N", help=_serve_help("max_text_chars")),
    timeout_s: float = typer.Option(30.0, "--timeout-s", metavar="S", help=_serve_help("timeout_s")),
    token_file: Optional[Path] = typer.Option(None, "--token-file", metavar="F", help=_serve_help("token_file")),
    workers: int = typer.Option(1, "--workers", metavar="N", help=_serve_help("workers")),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help=_serve_help("threads")),
) -> None:
    """Serve a model over HTTP: POST /v1/predict, GET /v1/metadata, /healthz, /readyz, /metrics, the
    Open Inference Protocol under /v2, the OpenAPI document at /openapi.json and a playground at /.
    Concurrent requests are batched. Stop it with Ctrl-C or SIGTERM: accepted requests finish first."""
    options = dict(locals())
    from pydantic import ValidationError

    from forgeml.errors import ConfigError
    from forgeml.serve import serve as run_server
    from forgeml.serve.settings import ServeSettings

    try:
        settings = ServeSettings(**options)
    except ValidationError as exc:
        problems = [f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise ConfigError("; ".join(problems)) from None

    def listening(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"serving {target} on http://{shown}:{port} (playground: http://{shown}:{port}/, API: /docs); Ctrl-C to stop", err=True)

    run_server(settings, on_listening=listening)


# --------------------------------------------------------------------------------------------------
# data


@data_app.command("inspect")
def data_inspect(
    file: Path = typer.Argument(..., metavar="CONFIG", help="Experiment config (YAML)."),
    overrides: Optional[List[str]] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """What the model will see: rows per split, class balance, bad rows, and per input column its
    encoding (text lengths and vocabulary, image shape and pixels, sequence windows, number ranges)."""
    from forgeml.config import load_config
    from forgeml.data.inspect import inspect

    cfg = load_config(file, overrides or [])
    summary = inspect(cfg.data, cfg.seed)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_inspection(summary)


@data_app.command("scrub")
def data_scrub(
    file: Path = typer.Argument(..., metavar="FILE", help="A CSV, TSV, JSON Lines or Parquet file."),
    column: str = typer.Option(..., "--column", metavar="NAME", help="The text column to scrub."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="Where to write (default: NAME.scrubbed.SUFFIX beside FILE)."),
    kinds: Optional[str] = typer.Option(
        None, "--kinds", metavar="K1,K2", help="Only these kinds: URL, EMAIL, IBAN, CARD, IP, PHONE, ID (default: all)."
    ),
) -> None:
    """Replace personal data in a text column (e-mail addresses, URLs, IP addresses, IBANs,
    payment cards, phone numbers, long ID-like digit runs) with [EMAIL], [URL], ... and count them.
    The other columns are copied unchanged; the input file is never modified."""
    from forgeml.data.pii import KINDS, scrub_file

    chosen = [k.strip().upper() for k in kinds.split(",") if k.strip()] if kinds else list(KINDS)
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise ForgeError(f"--kinds: {', '.join(unknown)} not among {', '.join(KINDS)}")
    written, rows, changed, counts = scrub_file(file, column, out, chosen)
    found = ", ".join(f"{counts[k]:,} {k}" for k in KINDS if k in counts) or "nothing found"
    typer.echo(f"{file}: {rows:,} rows, {changed:,} changed in column {column!r}: {found}")
    typer.echo(f"written: {written}")


def _print_inspection(summary: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    bad = sum(summary["bad_rows"].values())
    console.print(f"{summary['source']}: {summary['rows_read']:,} rows read; model input: {summary['model_input']}; task: {summary['task']}")
    if bad:
        per_column = ", ".join(f"{k} {v:,}" for k, v in summary["bad_rows"].items())
        stop = " (training stops at the first: on_bad_row is error)" if summary["on_bad_row"] == "error" else " (skipped)"
        console.print(f"bad rows: {bad:,} ({per_column}){stop}")
    if summary["without_window_or_target"]:
        console.print(f"rows without a full window or a forecast target (left out): {summary['without_window_or_target']:,}")

    splits = Table(box=box.SIMPLE_HEAD, title="rows per split" + (" and class" if "classes" in summary else ""))
    splits.add_column("class" if "classes" in summary else "")
    names = list(summary["splits"])
    for name in names:
        splits.add_column(name, justify="right")
    if "classes" in summary:
        for label in summary["classes"]["train"]:
            counts = [summary["classes"][name][label] for name in names]
            splits.add_row(label, *(f"{c:,} ({c / max(summary['splits'][n], 1):.0%})" for c, n in zip(counts, names)))
        splits.add_section()
        splits.add_row("all", *(f"{summary['splits'][n]:,}" for n in names))
    else:
        splits.add_row("rows", *(f"{summary['splits'][n]:,}" for n in names))
        for stat in ("mean", "std", "min", "max"):
            splits.add_row(f"target {stat}", *(f"{summary['target'][n][stat]:.4g}" if n in summary["target"] else "" for n in names))
    console.print(splits)

    inputs = Table(box=box.SIMPLE_HEAD, title="inputs (statistics of the training split)")
    inputs.add_column("column")
    inputs.add_column("type")
    inputs.add_column("what the model sees")
    for item in summary["inputs"]:
        inputs.add_row(item["name"], item["type"], _describe_input(item))
    console.print(inputs)


def _describe_input(item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "number":
        return f"mean {item['mean']:.4g}  std {item['std']:.4g}  range {item['min']:.4g} .. {item['max']:.4g}"
    if kind == "category":
        unknown = "  ".join(f"unseen in {k[8:]} {v:.1%}" for k, v in item.items() if k.startswith("unknown_"))
        return f"{item['vocabulary']:,} values (most common: {', '.join(item['most_common'])})  {unknown}".rstrip()
    if kind == "image":
        channels, height, width = item["shape"]
        pixels = "; ".join(f"mean {p['mean']:.3f} std {p['std']:.3f} range {p['min']:.2f}..{p['max']:.2f}" for p in item["pixels"])
        return f"{channels} x {height} x {width}; pixels {pixels}"
    if kind == "text":
        lengths = item["tokens_per_text"]
        unknown = "  ".join(f"[UNK] in {k[15:]} {v:.1%}" for k, v in item.items() if k.startswith("unknown_tokens_"))
        return (
            f"{item['tokenizer']} tokenizer, vocabulary {item['vocabulary']:,}, max length {item['max_length']}; tokens per text "
            f"p50 {lengths['p50']} p90 {lengths['p90']} p99 {lengths['p99']} max {lengths['max']}; truncated {item['truncated']:.1%}  {unknown}"
        )
    if kind == "sequence":
        windows = ", ".join(f"{k} {v:,}" for k, v in item["windows"].items())
        return f"windows of {item['length']} steps ({windows}); series mean {item['series_mean']:.4g} range {item['series_min']:.4g} .. {item['series_max']:.4g}"
    return ""


# --------------------------------------------------------------------------------------------------
# config


@config_app.command("validate")
def config_validate(file: Path = typer.Argument(..., metavar="FILE", help="Experiment config (YAML)."), overrides: Optional[List[str]] = SetOption) -> None:
    """Check a config; prints 'ok' or what is wrong, with the YAML path."""
    from forgeml.config import load_config

    cfg = load_config(file, overrides or [])
    typer.echo(f"{file}: ok ({cfg.model.type} on {cfg.data.source.type})")


@config_app.command("show")
def config_show(file: Path = typer.Argument(..., metavar="FILE", help="Experiment config (YAML)."), overrides: Optional[List[str]] = SetOption) -> None:
    """Print the fully resolved config, with every default filled in."""
    from forgeml.config import dump_config, load_config

    typer.echo(dump_config(load_config(file, overrides or [])), nl=False)


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of configs (for editors: yaml-language-server)."""
    from forgeml.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def _exit(code: int) -> None:
    """Exit with ``code``. A process started by torchrun skips the interpreter's finalization: gloo's
    worker threads can still hold tensors then, and destroying them during finalization aborts the
    process ("terminate called without an active exception") after its work is done and written."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main() -> None:
    """Entry point of the ``forgeml`` command."""
    try:
        with sigterm_raises():  # every command, so a kill mid-write leaves no half file; serve sets its own while it serves
            code = app(standalone_mode=False)
    except Terminated:
        code = TERMINATED
    except ForgeError as exc:
        if _state["debug"]:
            raise
        # one line, whatever the number of problems found (a config may have several)
        typer.echo("error: " + "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()), err=True)
        _exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors: typer's own message, exit 2
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    if code == 130:  # typer turns Ctrl-C into exit code 130 without raising
        typer.echo("interrupted", err=True)
    elif code == TERMINATED:
        typer.echo("terminated", err=True)
    _exit(code if isinstance(code, int) else 0)
