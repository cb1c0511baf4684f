"""Sequence architectures (rnn, attention, textcnn, transformer): shapes, padding, input checks, sizes, learning."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.registry import MODELS

pytestmark = pytest.mark.usefixtures("single_thread_torch")

VOCAB = 12
LENGTH = 10
TOKENS = InputSpec("tokens", (LENGTH,), vocab_size=VOCAB, pad_id=0)
SEQUENCE = InputSpec("sequence", (7, 3))

# small versions of every model and option; embedding / hidden widths kept tiny for speed
TINY_RNN = {"embedding_dim": 6, "hidden_size": 5, "attention_dim": 4}
TINY_TRANSFORMER = {"dim": 8, "heads": 2, "layers": 2, "ff_dim": 12}
TOKEN_CONFIGS = [
    *({"type": "rnn", "cell": cell, **TINY_RNN} for cell in ("rnn", "lstm", "gru")),
    *({"type": "rnn", "cell": "gru", "pooling": pooling, "bidirectional": True, "layers": 2, **TINY_RNN} for pooling in ("last", "mean", "max", "attention")),
    {"type": "rnn", "pooling": "mean", "dense": [7], "dropout": 0.2, **TINY_RNN},
    {"type": "attention", "embedding_dim": 6, "hidden_size": 5, "attention_dim": 4},
    {"type": "attention", "embedding_dim": 6, "hidden_size": 5, "attention_dim": 4, "bidirectional": False, "layers": 2},
    {"type": "textcnn", "embedding_dim": 6, "filters": 4},
    {"type": "textcnn", "embedding_dim": 6, "filters": 4, "kernels": [2]},
    *({"type": "transformer", "positions": positions, "pooling": pooling, **TINY_TRANSFORMER} for positions in ("learned", "sinusoidal") for pooling in ("cls", "mean")),
]
SEQUENCE_CONFIGS = [
    {"type": "rnn", "cell": "gru", "hidden_size": 5},
    {"type": "rnn", "cell": "lstm", "hidden_size": 5, "bidirectional": True, "pooling": "attention", "attention_dim": 4},
    {"type": "attention", "hidden_size": 5, "attention_dim": 4},
    {"type": "transformer", "positions": "sinusoidal", **TINY_TRANSFORMER},
    {"type": "transformer", "pooling": "mean", **TINY_TRANSFORMER},
]


def config_id(cfg: dict[str, Any]) -> str:
    return "-".join(f"{value}" for key, value in cfg.items() if key not in TINY_RNN and key not in TINY_TRANSFORMER)


def build(cfg: dict[str, Any], inputs: InputSpec = TOKENS, num_outputs: int = 3) -> nn.Module:
    """A model built through the registry from a config dict."""
    config = MODELS.get(cfg["type"]).config.model_validate(cfg)
    return MODELS.build(config, inputs=inputs, num_outputs=num_outputs)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def token_batch(lengths: list[int], width: int = LENGTH, seed: int = 0) -> torch.Tensor:
    """Rows of random real ids (1 .. VOCAB-1) of the given lengths, padded with 0 to ``width``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=generator)
    ids[torch.arange(width) >= torch.tensor(lengths).unsqueeze(1)] = 0
    return ids


@pytest.mark.parametrize("cfg", TOKEN_CONFIGS, ids=config_id)
def test_token_models_train_on_padded_text(cfg: dict[str, Any]):
    torch.manual_seed(0)
    model = build(cfg)
    out = model(token_batch([10, 3, 1, 0]))
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.square().sum().backward()
    embedding = next(m for m in model.modules() if isinstance(m, nn.Embedding))
    assert embedding.weight.grad is not None and embedding.weight.grad[1:].abs().sum() > 0
    assert embedding.weight.grad[0].abs().sum() == 0  # padding learns nothing
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("cfg", SEQUENCE_CONFIGS, ids=config_id)
def test_sequence_models_forecast_one_number(cfg: dict[str, Any]):
    model = build(cfg, SEQUENCE, num_outputs=1)
    windows = torch.randn(5, 7, 3, requires_grad=True)
    out = model(windows)
    assert out.shape == (5, 1)
    out.sum().backward()
    assert windows.grad is not None and windows.grad.abs().sum() > 0
    assert not any(isinstance(m, nn.Embedding) for m in model.modules())


@pytest.mark.parametrize("cfg", TOKEN_CONFIGS, ids=config_id)
def test_padding_does_not_change_the_output(cfg: dict[str, Any]):
    """The issue's padding test: a text gives the same output however much padding follows it."""
    torch.manual_seed(0)
    model = build(cfg).eval()
    batch = token_batch([4, 10, 2, 0, 1])
    with torch.no_grad():
        padded = model(batch)
        for row, length in enumerate([4, 10, 2, 0, 1]):
            alone = model(batch[row : row + 1, : max(length, 1)])  # no padding at all
            less = model(batch[row : row + 1, : min(length + 2, LENGTH)])  # a little padding
            assert torch.allclose(padded[row], alone[0], atol=1e-5), row
            assert torch.allclose(padded[row], less[0], atol=1e-5), row
    assert torch.isfinite(padded).all()  # row 3 is all padding: an empty text


def test_text_shorter_than_the_longest_window():
    model = build({"type": "textcnn", "embedding_dim": 4, "filters": 3, "kernels": [2, 5]}).eval()
    with torch.no_grad():
        assert model(torch.tensor([[3, 4]])).shape == (1, 3)
        assert torch.allclose(model(torch.tensor([[3, 4]])), model(torch.tensor([[3, 4, 0, 0, 0, 0]])), atol=1e-6)


def test_dropout_only_in_training():
    model = build({"type": "transformer", **TINY_TRANSFORMER, "dropout": 0.5})
    ids = token_batch([8, 5])
    torch.manual_seed(0)
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))


def test_parameter_counts():
    tokens = InputSpec("tokens", (6,), vocab_size=10)
    embedding = 10 * 4
    # a GRU layer has 3 gates, each W (H x in) + U (H x H) + two biases (H each)
    gru = 3 * (3 * 4 + 3 * 3 + 2 * 3)
    assert gru == 81
    assert parameters(build({"type": "rnn", "cell": "gru", "embedding_dim": 4, "hidden_size": 3}, tokens, 2)) == embedding + gru + (3 * 2 + 2)
    # 2 bidirectional layers: the second reads both directions of the first (6 wide); head reads 6
    second = 3 * (3 * 6 + 3 * 3 + 2 * 3)
    cfg = {"type": "rnn", "cell": "gru", "embedding_dim": 4, "hidden_size": 3, "layers": 2, "bidirectional": True}
    assert parameters(build(cfg, tokens, 2)) == embedding + 2 * gru + 2 * second + (6 * 2 + 2)
    # bidirectional LSTM (4 gates), attention W 6 -> 5 with bias, v 5 -> 1 without
    lstm = 4 * (3 * 4 + 3 * 3 + 2 * 3)
    cfg = {"type": "attention", "embedding_dim": 4, "hidden_size": 3, "attention_dim": 5}
    assert parameters(build(cfg, tokens, 2)) == embedding + 2 * lstm + (6 * 5 + 5) + 5 + (6 * 2 + 2) == 310
    # convolutions of 2 and 3 tokens, 5 filters each, then 10 pooled features -> 2
    cfg = {"type": "textcnn", "embedding_dim": 4, "kernels": [2, 3], "filters": 5}
    assert parameters(build(cfg, tokens, 2)) == embedding + (5 * 4 * 2 + 5) + (5 * 4 * 3 + 5) + (10 * 2 + 2)
    # embedding 10 x 8, learned positions 6 x 8, CLS 8; a block: two LayerNorms, qkv, out, MLP 8 -> 16 -> 8
    block = 2 * 16 + (8 * 24 + 24) + (8 * 8 + 8) + (8 * 16 + 16) + (16 * 8 + 8)
    cfg = {"type": "transformer", "dim": 8, "heads": 2, "layers": 1, "ff_dim": 16, "dropout": 0.0}
    assert parameters(build(cfg, tokens, 2)) == 80 + 48 + 8 + block + 16 + (8 * 2 + 2) == 770
    cfg.update(positions="sinusoidal", pooling="mean")  # the fixed table and mean pooling add nothing to learn
    assert parameters(build(cfg, tokens, 2)) == 770 - 48 - 8


def test_transformer_defaults():
    model = build({"type": "transformer"}, InputSpec("tokens", (20,), vocab_size=100))
    assert len(model.blocks) == 2 and model.blocks[0].attention.heads == 4
    assert model.blocks[0].mlp[0].out_features == 4 * 128
    assert model.learned_positions.shape == (20, 128)
    assert "fixed_positions" not in model.state_dict()
    assert build({"type": "transformer", "max_length": 64}, InputSpec("tokens", (20,), vocab_size=100)).learned_positions.shape == (64, 128)


@pytest.mark.parametrize(
    "cfg, inputs, message",
    [
        ({"type": "rnn"}, InputSpec("vector", (64,)),
         "model.type rnn needs text (token ids) or a numeric sequence; this data gives a vector of 64 numbers: use mlp or linear"),
        ({"type": "attention"}, InputSpec("image", (1, 8, 8)),
         "model.type attention needs text (token ids) or a numeric sequence; this data gives 1-channel 8x8 images: use cnn or mlp"),
        ({"type": "textcnn"}, InputSpec("sequence", (24, 1)),
         "model.type textcnn needs text (token ids); this data gives windows of 24 steps x 1 value: use rnn, attention, transformer, mlp or linear"),
        ({"type": "transformer"}, InputSpec("vector", (5,)),
         "model.type transformer needs text (token ids) or a numeric sequence; this data gives a vector of 5 numbers: use mlp or linear"),
        ({"type": "transformer", "heads": 3}, TOKENS, "model.heads 3 does not divide model.dim 128"),
        ({"type": "transformer", "max_length": 4}, TOKENS,
         "model.max_length 4 is shorter than the inputs (token ids (length 10, vocabulary 12)); raise it or leave it null"),
    ],
    ids=["rnn-vector", "attention-image", "textcnn-sequence", "transformer-vector", "heads", "max-length"],
)
def test_configuration_errors(cfg: dict[str, Any], inputs: InputSpec, message: str):
    with pytest.raises(ConfigError) as info:
        build(cfg, inputs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "cfg",
    [
        {"type": "rnn", "cell": "lstm", "embedding_dim": 8, "hidden_size": 16},
        {"type": "transformer", "dim": 16, "heads": 2, "layers": 1, "dropout": 0.0},
        {"type": "transformer", "dim": 16, "heads": 2, "layers": 1, "dropout": 0.0, "positions": "sinusoidal", "pooling": "mean"},
    ],
    ids=["lstm", "transformer", "transformer-sinusoidal-mean"],
)
def test_learns_whether_a_token_occurs(cfg: dict[str, Any]):
    """Label: does token 5 occur anywhere in the text? Order-free, so it needs the whole sequence read."""
    torch.manual_seed(0)
    lengths = torch.randint(1, 9, (256,)).tolist()
    ids = token_batch(lengths, width=8, seed=1)
    labels = (ids == 5).any(1).long()
    assert 0.3 < labels.float().mean() < 0.7  # neither answer is a free win
    model = build(cfg, InputSpec("tokens", (8,), vocab_size=VOCAB), num_outputs=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(ids), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(ids).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.9
