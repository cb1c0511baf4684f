"""Small building blocks shared by the architectures."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu", "silu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def dense_stack(in_features: int, hidden: list[int], act: str, dropout: float, batch_norm: bool) -> tuple[nn.Sequential, int]:
    """Linear -> [BatchNorm] -> activation -> [Dropout] for each hidden width; returns (stack, out width)."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers.append(nn.Linear(width, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(activation(act))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers), width


# What to suggest when a model does not fit the data, by the kind of input the data gives.
MODELS_FOR = {
    "vector": "use mlp or linear",
    "image": "use cnn or mlp",
    "sequence": "use rnn, attention, transformer, mlp or linear",
    "tokens": "use rnn, attention, textcnn or transformer",
}


def flat_width(model: str, inputs: InputSpec) -> int:
    """Input width of a model that flattens its input; token ids cannot be flattened into numbers."""
    if inputs.kind == "tokens":
        raise ConfigError(f"model.type {model} cannot read text (token ids); {MODELS_FOR['tokens']}")
    return math.prod(inputs.shape)


# --- sequence models (rnn, attention, textcnn, transformer) ---------------------------------------


def require_input_kind(model: str, inputs: InputSpec, kinds: tuple[str, ...]) -> None:
    """Stop with a message naming the models that fit when ``inputs`` is not one of ``kinds``.

    Args:
        model: the model's YAML ``type``, for the message.
        inputs: what the data gives.
        kinds: the input kinds the model reads, out of ``tokens`` and ``sequence``.

    Raises:
        ConfigError: ``inputs.kind`` is not in ``kinds``.
    """
    if inputs.kind in kinds:
        return
    needs = " or ".join({"tokens": "text (token ids)", "sequence": "a numeric sequence"}[kind] for kind in kinds)
    raise ConfigError(f"model.type {model} needs {needs}; this data gives {inputs.describe()}: {MODELS_FOR[inputs.kind]}")


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """N x L bool, True at real tokens. Padding sits at the end of a row (the ``InputSpec`` contract).

    The first position always counts as real, so an all-padding row (an empty text) is read as a text
    of one padding token: every pooling then has something to pool, and no softmax or mean divides
    by zero into NaN. For any other row the first position is real anyway.
    """
    mask = ids != pad_id
    mask[:, 0] = True
    return mask


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of N x L x D ``values`` over the positions where the N x L ``mask`` is True; N x D."""
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1)


def masked_max(values: Tensor, mask: Tensor) -> Tensor:
    """Maximum of N x L x D ``values`` over the positions where the N x L ``mask`` is True; N x D."""
    return values.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


class AdditiveAttention(nn.Module):
    """Additive (Bahdanau-style) attention pooling: a learned weighted average of the steps.

    score_t = v . tanh(W h_t + b), a = softmax(score) over the real steps, output = sum_t a_t h_t.
    (The scoring of Yang et al. 2016 and of the classic LSTM + attention text classifiers.)
    """

    def __init__(self, width: int, attention_dim: int):
        super().__init__()
        self.project = nn.Linear(width, attention_dim)
        # no bias: softmax ignores a shift common to every score
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, values: Tensor, mask: Tensor) -> Tensor:
        """Pool N x L x D ``values`` over the positions where the N x L ``mask`` is True; returns N x D."""
        scores = self.score(torch.tanh(self.project(values))).squeeze(-1)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.einsum("nl,nld->nd", weights, values)


# --- transformer pieces (transformer, gpt) --------------------------------------------------------


def require_heads_divide_dim(heads: int, dim: int) -> None:
    """Stop unless ``heads`` divides ``dim``: every head gets an equal slice of each vector.

    Raises:
        ConfigError: ``dim % heads`` is not zero.
    """
    if dim % heads:
        raise ConfigError(f"model.heads {heads} does not divide model.dim {dim}")


def init_normal_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) weights and zero biases (as GPT-2 and BERT); a padding embedding stays zero.

    For ``model.apply``. LayerNorms keep PyTorch's ones and zeros.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


class SelfAttention(nn.Module):
    """Multi-head self-attention in which each position attends only to the keys the mask allows.

    ``project`` and ``merge`` are the two halves around the attention itself, so that a variant
    (the GPT's causal attention with a key/value cache) changes only what happens in between.
    """

    def __init__(self, dim: int, heads: int, dropout: float, bias: bool = True):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """N x L x D -> queries, keys and values, each N x heads x L x D/heads."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def merge(self, attended: Tensor) -> Tensor:
        """N x heads x L x D/heads -> the heads side by side, through the output projection: N x L x D."""
        batch, _, length, _ = attended.shape
        return self.out(attended.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, x: Tensor, key_mask: Optional[Tensor]) -> Tensor:
        """x: N x L x D; key_mask: N x 1 x 1 x L bool, True at keys to attend to (None: all)."""
        q, k, v = self.project(x)
        dropout = self.dropout if self.training else 0.0
        return self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: the residual stream is only ever added to.

    x = x + Attention(LN(x)); x = x + MLP(LN(x)), with dropout on both branches. The attention is
    given (``SelfAttention`` or a variant), and whatever ``forward`` gets after ``x`` is passed to it.
    """

    def __init__(self, dim: int, ff_dim: int, dropout: float, attention: nn.Module, bias: bool = True):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, bias=bias)
        self.attention = attention
        self.mlp_norm = nn.LayerNorm(dim, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_dim, bias=bias), nn.GELU(), nn.Linear(ff_dim, dim, bias=bias))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, *attention_args: Any) -> Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), *attention_args))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))
