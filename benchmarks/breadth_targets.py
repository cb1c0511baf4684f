"""Issue 3's accuracy targets: train the breadth examples in full and compare with plain baselines.

    .venv/bin/python benchmarks/breadth_targets.py                 # every example (about 20 min on 2 cores)
    .venv/bin/python benchmarks/breadth_targets.py --only sunspots_gru breast_cancer_mlp

Each example is trained exactly as a user would (``forgeml.train(examples/NAME.yaml)``, into a
scratch directory) and scored on its test split. Beside them, on the very same split:

* rotten_tomatoes: TF-IDF on word unigrams + bigrams with logistic regression (scikit-learn), the
  usual strong linear baseline, and the majority class;
* sunspots: the persistence forecast (next year = this year), which the run reports itself.

Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import forgeml
from forgeml.config import load_config
from forgeml.data.dataset import load_dataset

REPO = Path(__file__).resolve().parents[1]
SENTIMENT = ["sentiment_lstm", "sentiment_attention", "sentiment_textcnn", "sentiment_transformer"]
EXAMPLES = [*SENTIMENT, "sunspots_gru", "breast_cancer_mlp", "image_folder_cnn"]


def tfidf_baseline(example: str) -> dict[str, float]:
    """TF-IDF (1-2 grams) + logistic regression and the majority class on the example's own split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    cfg = load_config(REPO / "examples" / f"{example}.yaml")
    dataset = load_dataset(cfg.data, cfg.seed)
    train, test = dataset.split("train"), dataset.split("test")
    text, key = cfg.data.features[0].name, dataset.features.target_key
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform(train.columns[text].astype(str))
    model = LogisticRegression(C=4.0, max_iter=2000).fit(x_train, train.columns[key].astype(str))
    predicted = model.predict(vectorizer.transform(test.columns[text].astype(str)))
    truth = test.columns[key].astype(str)
    labels, counts = np.unique(train.columns[key].astype(str), return_counts=True)
    return {"tfidf_lr": float((predicted == truth).mean()), "majority": float((truth == labels[counts.argmax()]).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=EXAMPLES, help="Train just these examples.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for example in args.only or EXAMPLES:
            started = time.perf_counter()
            result = forgeml.train(REPO / "examples" / f"{example}.yaml", out=Path(scratch) / example, quiet=True)
            seconds = time.perf_counter() - started
            test = result.metrics["splits"]["test"]
            training = result.metrics["training"]
            if "accuracy" in test:
                score = f"test accuracy **{test['accuracy']:.4f}**"
            else:
                score = f"test MAE **{test['mae']:.2f}**" + (
                    f" (persistence {test['persistence_mae']:.2f})" if "persistence_mae" in test else ""
                )
            baseline = ""
            if example in SENTIMENT:
                reference = tfidf_baseline(example)
                baseline = f"TF-IDF+LR {reference['tfidf_lr']:.4f}, majority {reference['majority']:.4f}"
            rows.append(
                f"| {example} | {score} | {baseline} | {training['steps']} steps (best at {training['best_step']}) | {seconds:.0f} s |"
            )
            print(rows[-1], flush=True)
    print("\n| example | result | baseline on the same split | training | wall time |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
