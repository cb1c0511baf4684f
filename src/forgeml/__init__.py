"""forgeml: from a dataset to a trained, evaluated, explained, hardened and deployed model.

    import forgeml
    result = forgeml.train("examples/mnist_cnn.yaml")
    predictor = forgeml.load(result.run_dir)
    predictor.predict(["digit.png"])
    forgeml.evaluate(result.run_dir, split="test")

Heavy modules (torch) are imported on first use, so ``import forgeml`` is quick.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "load", "evaluate", "load_config", "ForgeError", "__version__"]
__version__ = "0.1.0"

from forgeml.errors import ForgeError


def train(config: Any, **options: Any) -> Any:
    """Train from a YAML path, dict or config; see ``forgeml.training.job.train`` for the options."""
    from forgeml.training.job import train as run_training

    return run_training(config, **options)


def load(run_dir: Any, device: str = "cpu") -> Any:
    """Open a finished run as a ``Predictor`` (see ``forgeml.predictor.load``)."""
    from forgeml.predictor import load as load_predictor

    return load_predictor(run_dir, device=device)


def evaluate(run_dir: Any, split: str = "test", save: bool = True) -> Any:
    """Evaluate a run on a split (see ``forgeml.evaluation.run``)."""
    from forgeml.evaluation import run as run_evaluation

    return run_evaluation(run_dir, split=split, save=save)


def load_config(source: Any, overrides: list[str] | None = None) -> Any:
    """Validate a config from a YAML path or dict (see ``forgeml.config.load_config``)."""
    from forgeml.config import load_config as load

    return load(source, overrides)
