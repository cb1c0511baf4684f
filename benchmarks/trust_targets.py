"""The trust targets of issue 6, measured as a user would reach them: examples trained with
``forgeml.train``, then the attack, explain and audit stages on their runs.

    .venv/bin/python benchmarks/trust_targets.py                      # everything (about 30 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/trust_targets.py --only robustness    # or explain, privacy, pii

robustness  mnist_cnn undefended under PGD-20 at L-inf eps 0.3 (target: robust accuracy < 0.05);
            mnist_cnn_adversarial trained (target: under 10 minutes) and attacked with PGD-40 at
            eps 0.3 (targets: robust accuracy >= 0.75, clean accuracy >= 0.93)
explain     deletion curves on 200 test digits for every method (target: ig and gradcam better
            than random) and on 200 rotten_tomatoes reviews for the sentiment LSTM (target: ig)
privacy     mnist_cnn_dp at eps 8, delta 1e-5 (target: test accuracy >= 0.85, membership AUC <= 0.55)
            beside the same network trained without DP until it overfits
pii         precision and recall per kind on tests/data/pii_corpus.py (target: each >= 0.95)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "data"))

import forgeml  # noqa: E402
from forgeml.explanation import faithfulness  # noqa: E402
from forgeml.privacy import membership  # noqa: E402
from forgeml.robustness import run as attack  # noqa: E402

EXAMPLES = REPO / "examples"


def train(name: str, runs: Path, overrides: list[str] | None = None, out: str | None = None) -> tuple[Path, float, dict]:
    started = time.perf_counter()
    result = forgeml.train(EXAMPLES / f"{name}.yaml", out=runs / (out or name), overwrite=True, overrides=overrides or [], live_progress=False)
    return result.run_dir, time.perf_counter() - started, result.metrics


def robustness(runs: Path) -> list[str]:
    lines = []
    plain, seconds, metrics = train("mnist_cnn", runs)
    undefended = attack(plain, "pgd", [0.1, 0.2, 0.3], steps=20)
    lines.append(
        f"| mnist_cnn (undefended, {seconds:.0f} s) | clean {undefended.clean_accuracy:.4f} | PGD-20 ε 0.1/0.2/0.3: "
        + " / ".join(f"{p.robust_accuracy:.4f}" for p in undefended.points)
        + f" | target < 0.05 at 0.3: {'met' if undefended.points[-1].robust_accuracy < 0.05 else 'NOT met'} |"
    )
    defended, seconds, metrics = train("mnist_cnn_adversarial", runs)
    strong = attack(defended, "pgd", [0.1, 0.2, 0.3], steps=40)
    fgsm = attack(defended, "fgsm", [0.3])
    clean = metrics["splits"]["test"]["accuracy"]
    robust = strong.points[-1].robust_accuracy
    verdict = "met" if robust >= 0.75 and clean >= 0.93 and seconds < 600 else "NOT met"
    lines.append(
        f"| mnist_cnn_adversarial (PGD-5 training, {seconds:.0f} s, best at step {metrics['training']['best_step']}) | clean {clean:.4f} | "
        f"PGD-40 ε 0.1/0.2/0.3: " + " / ".join(f"{p.robust_accuracy:.4f}" for p in strong.points)
        + f"; FGSM ε 0.3: {fgsm.points[0].robust_accuracy:.4f} | target ≥ 0.75 robust, ≥ 0.93 clean, < 600 s: {verdict} |"
    )
    return lines


def explain(runs: Path) -> list[str]:
    digits = runs / "mnist_cnn"
    if not (digits / "model.safetensors").is_file():
        digits, _, _ = train("mnist_cnn", runs)
    reviews, seconds, _ = train("sentiment_lstm", runs)
    lines = []
    for name, run_dir in (("mnist_cnn", digits), (f"sentiment_lstm ({seconds:.0f} s to train)", reviews)):
        for curve in faithfulness(run_dir, limit=200).curves:
            lines.append(
                f"| {name} | {curve.method} | {curve.auc:.4f} | {curve.random_auc:.4f} | {curve.improvement:+.4f} ± {2 * curve.standard_error:.4f} | "
                f"{'better than random' if curve.better_than_random else 'FLAGGED'} |"
            )
    return lines


def privacy(runs: Path) -> list[str]:
    lines = []
    private, seconds, metrics = train("mnist_cnn_dp", runs)
    audit = membership(private)
    spent = metrics["privacy"]
    accuracy = metrics["splits"]["test"]["accuracy"]
    lines.append(
        f"| mnist_cnn_dp (DP-SGD, {seconds:.0f} s) | ε {spent['epsilon']:.3f}, δ {spent['delta']:g}, noise {spent['noise_multiplier']:.3f} | "
        f"{accuracy:.4f} | {audit.auc:.4f} | {audit.advantage:.4f} | train {audit.member_loss:.4f} / test {audit.non_member_loss:.4f} | "
        f"{'met' if accuracy >= 0.85 and audit.auc <= 0.55 else 'NOT met'} |"
    )
    overfit = ["train.privacy=null", "train.epochs=150", "train.keep_best=false", "train.batch_size=64", "train.monitor=loss"]
    plain, seconds, metrics = train("mnist_cnn_dp", runs, overfit, out="mnist_cnn_overfit")
    audit = membership(plain)
    lines.append(
        f"| the same CNN without DP, 150 epochs ({seconds:.0f} s) | none | {metrics['splits']['test']['accuracy']:.4f} | {audit.auc:.4f} | "
        f"{audit.advantage:.4f} | train {audit.member_loss:.4f} / test {audit.non_member_loss:.4f} | |"
    )
    return lines


def pii(runs: Path) -> list[str]:
    from pii_corpus import corpus, scores

    from forgeml.data.pii import scrub

    items = corpus()
    positives = sum(1 for _, _, kind in items if kind)
    measured = scores(items, [scrub(text)[0] for text, _, _ in items])
    lines = [f"corpus: {positives} positive and {len(items) - positives} negative strings"]
    for kind, entry in measured.items():
        lines.append(f"| {kind} | {entry['positives']} | {entry['precision']:.4f} | {entry['recall']:.4f} | {entry['false_positives']} | {entry['missed']} |")
    return lines


PARTS = {"robustness": robustness, "explain": explain, "privacy": privacy, "pii": pii}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(PARTS), help="run only these parts")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "trust", help="where the runs go")
    args = parser.parse_args()
    for name in args.only or list(PARTS):
        started = time.perf_counter()
        lines = PARTS[name](args.runs)
        print(f"\n## {name} ({time.perf_counter() - started:.0f} s)")
        print("\n".join(lines), flush=True)
    print(json.dumps({"torch": __import__("torch").__version__, "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
