"""Test helpers shared by the whole suite: tiny configs, a small CSV dataset with every column kind,
and a runner for the real command line. (tests/ is on sys.path: see pyproject's pytest settings.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**sections: Any) -> dict[str, Any]:
    """A config that trains in about a second: digits, a small CNN, a few steps.

    Keyword arguments replace whole top-level sections (data=..., model=..., train=...).
    """
    config: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": {"type": "builtin", "name": "digits"}, "split": {"validation": 0.1, "test": 0.1}},
        "model": {"type": "cnn", "blocks": [{"channels": 4}, {"channels": 8}], "dense": [16]},
        "train": {"epochs": 1, "max_steps": 12, "batch_size": 32, "lr": 0.01, "log_every": 4, "checkpoint_every": 6},
    }
    config.update(sections)
    return config


def make_csv_dataset(directory: Path, rows: int = 60, seed: int = 0) -> Path:
    """A CSV with a number, a category, an image-path column (8x8 PNGs) and a label that depends on them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["size,colour,picture,label"]
    for i in range(rows):
        label = "big" if i % 2 else "small"
        size = rng.normal(5.0 if label == "big" else 1.0, 0.5)
        colour = rng.choice(["red", "green", "blue"])
        pixels = (rng.random((8, 8)) * (200 if label == "big" else 60)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(images / f"img{i}.png")
        lines.append(f"{size:.3f},{colour},images/img{i}.png,{label}")
    path = directory / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m forgeml ARGS`` as a real subprocess and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "forgeml", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


GOOD = ["great", "superb", "moving", "funny", "clever", "charming"]
BAD = ["dull", "boring", "clumsy", "tedious", "flat", "lazy"]
FILLER = ["the", "film", "was", "a", "story", "acting", "plot", "really", "quite", "and"]


def write_reviews(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """Short synthetic reviews whose label is given by the one opinion word each contains."""
    rng = np.random.default_rng(seed)
    lines = ["text,label"]
    for i in range(rows):
        fresh = i % 2 == 0
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(GOOD if fresh else BAD)))
        lines.append(f"{' '.join(words)},{'fresh' if fresh else 'rotten'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def review_classifier(csv: Path, model: dict[str, Any], **train: Any) -> dict[str, Any]:
    """A config that classifies the reviews of ``write_reviews`` with ``model`` (a word tokenizer keeping every word)."""
    return {
        "data": {
            "source": {"type": "csv", "path": str(csv)},
            "features": [{"type": "text", "name": "text", "min_frequency": 1}],
            "target": {"type": "category", "name": "label"},
        },
        "model": model,
        "train": {"batch_size": 32, "lr": 0.01, **train},
    }



TINY_LM_TEXT = "the cat sat on the mat. the dog lay on the rug. a bird sang in the tree.\n"
# a chat template of the kind instruction-tuned models ship (role header, content, end of turn)
TINY_CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


def make_tiny_causal_lm(directory: Path, context: int = 64) -> Path:
    """A randomly initialised two-layer Llama with a byte-level BPE tokenizer, saved as a Hugging Face
    model directory (config.json, model.safetensors, tokenizer.json): a stand-in for a pretrained
    causal LM that loads with AutoModelForCausalLM / AutoTokenizer offline in a second."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([TINY_LM_TEXT] * 20, trainer)
    wrapper = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", model_max_length=context)
    wrapper.chat_template = TINY_CHAT_TEMPLATE
    wrapper.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=context, tie_word_embeddings=True,
        eos_token_id=tokenizer.token_to_id("<|endoftext|>"), bos_token_id=None, initializer_range=0.3,  # peaked logits: greedy choices are clear-cut
    )
    LlamaForCausalLM(config).save_pretrained(str(directory))
    return directory


def diverged_copy(run: Path, out: Path) -> Path:
    """A copy of a finished run whose weights hold a nan, as a run trained before forgeml stopped on
    a non-finite loss could have them (its manifest is updated, so the copy loads)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from forgeml.run import RunDir

    shutil.copytree(run, out, ignore=shutil.ignore_patterns("export", "export.json", "checkpoints"))
    weights = load_file(str(out / "model.safetensors"))
    name = next(n for n in sorted(weights) if weights[n].dtype.kind == "f")
    weights[name] = weights[name].copy()
    weights[name].flat[0] = np.nan
    save_file(weights, str(out / "model.safetensors"))
    RunDir(out).write_manifest(["model.safetensors"])
    return out


def line_data(test: float = 0.3) -> dict[str, Any]:
    """The ``data`` section of 60 points of y = 3x + 1 in x from -2 to 2 (an inline source): x the
    one number feature, y the target, 20% held out for validation and ``test`` for test."""
    x = np.linspace(-2, 2, 60)
    return {
        "source": {"type": "inline", "columns": {"x": x.round(3).tolist(), "y": (3 * x + 1).round(3).tolist()}},
        "features": [{"type": "number", "name": "x"}],
        "target": {"type": "number", "name": "y"},
        "split": {"validation": 0.2, "test": test},
    }


def line_config(**train: Any) -> dict[str, Any]:
    """A linear regression on ``line_data`` (test 20%), trained by full-batch SGD for 40 steps,
    checkpointed every 4; ``train`` keys replace those. With lr 10 it diverges: on standardised
    data each step multiplies the error by -19, and the loss overflows at step 16."""
    data = line_data(test=0.2)
    settings = {"optimizer": "sgd", "lr": 0.1, "batch_size": "full", "epochs": 40, "checkpoint_every": 4, **train}
    return tiny_config(name="line", data=data, model={"type": "linear"}, train=settings)
