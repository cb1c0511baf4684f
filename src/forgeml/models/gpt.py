"""GPT: a decoder-only transformer language model, which gives for every position the next token's logits.

Token embeddings plus learned positions, then pre-LayerNorm blocks (the transformer's ``Block``) whose
attention is causal: position t sees positions 0..t only. A final LayerNorm and a linear layer to the
vocabulary, which shares its weight matrix with the token embedding (``tie_weights``), as GPT-2 does.

Training reads whole windows; attention then runs through ``F.scaled_dot_product_attention`` with
``is_causal=True`` and no mask tensor, so that the fused (flash / memory-efficient) kernels apply on a
GPU. Generation (``forgeml.models.generation``) feeds one token at a time and keeps the keys and values
of the positions already read in a ``KVCache``, so that each new token costs one position, not the
whole window.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from forgeml.config import Section
from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.models.layers import Block, SelfAttention, init_normal_weights, require_heads_divide_dim, require_input_kind
from forgeml.registry import MODELS


class GPTConfig(Section):
    """Token + position embeddings -> causal pre-LayerNorm blocks -> next-token logits over the vocabulary."""

    type: Literal["gpt"] = Field(description="GPT: decoder-only transformer language model (predicts the next token).")
    layers: int = Field(6, ge=1, description="Transformer blocks.")
    heads: int = Field(6, ge=1, description="Attention heads per block; must divide dim.")
    dim: int = Field(384, ge=1, description="Width of every position's vector (the model dimension); the MLP is 4 x dim wide.")
    context: int = Field(256, ge=1, description="Longest sequence the model reads (the size of its position table).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the embeddings, the attention weights and each residual branch.")
    bias: bool = Field(True, description="Biases in the Linear and LayerNorm layers (false: fewer parameters, a little faster).")
    tie_weights: bool = Field(True, description="The output layer shares its weights with the token embedding (as GPT-2).")
    activation_checkpointing: bool = Field(
        False, description="Recompute each block during the backward pass instead of storing its activations: less memory, about a third more compute."
    )


class KVCache:
    """The keys and values of the positions a GPT has already read, so that new tokens need not re-read them.

    One key and one value tensor per layer (``buffers``), N x heads x context x head_dim, allocated on
    the first ``update`` of that layer with the batch size, dtype and device of the keys it is given;
    and ``length``: how many positions are filled. ``GPT.forward(ids, cache)`` reads ``ids`` as the positions
    ``length .. length + T - 1``, appends their keys and values, and advances ``length`` by T.

    It holds at most ``context`` positions: the GPT's positions are absolute, so a cache cannot slide.
    ``forgeml.models.generation.generate`` starts a new one (``reset``) over the last ``context`` tokens
    when it is full.
    """

    def __init__(self, context: int):
        self.context = context
        self.length = 0
        self.buffers: dict[int, tuple[Tensor, Tensor]] = {}  # layer -> (keys, values)

    def reset(self) -> None:
        """Forget every position (the buffers stay allocated)."""
        self.length = 0

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store a layer's N x heads x T x head_dim keys and values after the ``length`` cached ones.

        Returns:
            The layer's keys and values for all ``length + T`` positions (views into the cache).
        """
        if layer not in self.buffers:
            batch, heads, _, head_dim = keys.shape
            self.buffers[layer] = (keys.new_zeros(batch, heads, self.context, head_dim), values.new_zeros(batch, heads, self.context, head_dim))
        cached_keys, cached_values = self.buffers[layer]
        end = self.length + keys.shape[2]
        cached_keys[:, :, self.length : end] = keys
        cached_values[:, :, self.length : end] = values
        return cached_keys[:, :, :end], cached_values[:, :, :end]


class ConcatCache:
    """A key/value cache as tensors in and tensors out, for export: the past keys and values of every
    layer come in as L x N x heads x P x head_dim tensors, and each layer's keys and values for all
    P + T positions are collected in ``present`` (the graph's outputs). ``KVCache`` writes into
    preallocated buffers, which an exported graph cannot keep between calls; this one concatenates.
    Masks are always spelled out (``traced``), so the graph holds for any P and T.
    """

    traced = True

    def __init__(self, keys: Tensor, values: Tensor):
        self.keys, self.values = keys, values
        self.length = keys.shape[3]
        self.present: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = torch.cat([self.keys[layer], keys], dim=2), torch.cat([self.values[layer], values], dim=2)
        self.present[layer] = (keys, values)
        return keys, values


class CausalSelfAttention(SelfAttention):
    """Self-attention in which each position sees itself and the positions before it, optionally through a cache."""

    def forward(self, x: Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> Tensor:
        """x: N x T x D, the positions after the ``cache.length`` cached ones (none without a cache)."""
        q, k, v = self.project(x)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            return self.merge(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True))
        start, new = cache.length, x.shape[1]
        k, v = cache.update(layer, k, v)
        if getattr(cache, "traced", False):  # an exported graph: one mask that holds for every length
            mask = torch.arange(start + new, device=x.device) <= torch.arange(start, start + new, device=x.device)[:, None]
        elif new == 1:  # one new query may see every key: no mask needed
            mask = None
        elif start == 0:  # a prompt into an empty cache: the plain causal square
            return self.merge(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True))
        else:
            # is_causal=True aligns its triangle to the top left of the T x (start + T) scores, which
            # would hide cached keys from the new queries: spell out that query i sees keys 0 .. start + i.
            query_positions = torch.arange(start, start + new, device=x.device)
            mask = torch.arange(start + new, device=x.device) <= query_positions[:, None]
        return self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout))


class GPT(nn.Module):
    """The network ``gpt`` builds: token ids N x T -> next-token logits N x T x vocabulary."""

    def __init__(self, cfg: GPTConfig, vocab_size: int):
        super().__init__()
        self.context = cfg.context
        self.activation_checkpointing = cfg.activation_checkpointing
        self.token_embedding = nn.Embedding(vocab_size, cfg.dim)
        self.position_embedding = nn.Embedding(cfg.context, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, 4 * cfg.dim, cfg.dropout, CausalSelfAttention(cfg.dim, cfg.heads, cfg.dropout, cfg.bias), cfg.bias)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        # No bias, as in GPT-2: tied, the output layer is exactly the embedding matrix read backwards.
        self.head = nn.Linear(cfg.dim, vocab_size, bias=False)
        if cfg.tie_weights:
            # One tensor under two names: the state dict lists both (load_state_dict fills it twice
            # with the same values); parameters() yields it once, so the optimizer sees it once.
            self.head.weight = self.token_embedding.weight
        self.apply(init_normal_weights)
        # GPT-2: each block adds two branches to the residual stream, so its variance grows with depth;
        # the projections into the stream start 1/sqrt(2 x layers) as large to keep the sum at scale.
        for block in self.blocks:
            for projection in (block.attention.out, block.mlp[2]):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    def new_cache(self) -> KVCache:
        """An empty key/value cache for generation."""
        return KVCache(self.context)

    def forward(self, ids: Tensor, cache: Optional[KVCache] = None) -> Tensor:
        """Next-token logits for every position.

        Args:
            ids: N x T token ids (int64).
            cache: keys and values of earlier positions; ``ids`` then continue after ``cache.length``
                and are appended to it. None: ``ids`` start at position 0.

        Returns:
            N x T x vocabulary logits: row t scores the token that follows ``ids[:, t]``.

        Raises:
            ValueError: the positions would run past ``context``.
        """
        length = ids.shape[1]
        start = cache.length if cache is not None else 0
        if not getattr(cache, "traced", False) and start + length > self.context:  # an exported graph's caller keeps to the context
            if cache is None:
                raise ValueError(f"{length} tokens are longer than the GPT's context of {self.context}; crop the input to its last {self.context} tokens")
            raise ValueError(
                f"{length} tokens after {start} cached positions run past the GPT's context of {self.context};"
                f" reset the cache and feed the last {self.context} tokens"
            )
        positions = torch.arange(start, start + length, device=ids.device)
        hidden = self.dropout(self.token_embedding(ids) + self.position_embedding(positions))
        # the cache is written during the forward pass, so a recomputed block would write it again at the wrong place
        recompute = self.activation_checkpointing and cache is None and self.training and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks):
            if recompute:
                hidden = checkpoint(block, hidden, use_reentrant=False)
            else:
                hidden = block(hidden, cache, index)
        if cache is not None:
            cache.length += length
        return self.head(self.norm(hidden))


def num_parameters(model: GPT, non_embedding: bool = True) -> int:
    """How many numbers the model learns, each shared tensor counted once.

    Args:
        model: a GPT.
        non_embedding: leave out the embedding tables, as the scaling-law and FLOP counts do: the
            position table always; the token embedding only when it is not tied to the output layer
            (tied, the same matrix is the output layer, a matrix multiply every token pays for).

    Returns:
        The number of parameters.
    """
    total = sum(parameter.numel() for parameter in model.parameters())
    if non_embedding:
        total -= model.position_embedding.weight.numel()
        if model.head.weight is not model.token_embedding.weight:
            total -= model.token_embedding.weight.numel()
    return total


def flops_per_token(cfg: GPTConfig, num_params: int, context: int) -> int:
    """Training FLOPs per token (forward and backward): 6N + 12 L H Q T (PaLM, appendix B).

    6N counts the matrix multiplies through the weights (2 per weight forward, 4 backward); the second
    term the attention scores and weighted sums, which grow with the sequence, counted over the full
    T x T square as PaLM and nanoGPT do (the causal half is not subtracted). Model FLOPs utilisation
    is then ``flops_per_token * tokens_per_second / peak FLOPs per second``.

    Args:
        cfg: the GPT's config: L = ``layers``, H = ``heads``, Q = ``dim // heads``.
        num_params: N, the non-embedding parameter count (``num_parameters(model)``).
        context: T, the sequence length trained on.

    Returns:
        FLOPs per token.
    """
    head_dim = cfg.dim // cfg.heads
    return 6 * num_params + 12 * cfg.layers * cfg.heads * head_dim * context


@MODELS.register("gpt", GPTConfig)
def build_gpt(cfg: GPTConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    """A GPT over the vocabulary of ``inputs``.

    Raises:
        ConfigError: the inputs are not token ids, ``num_outputs`` is not the vocabulary size,
            ``heads`` does not divide ``dim``, or the inputs are longer than ``context``.
    """
    require_input_kind("gpt", inputs, ("tokens",))
    require_heads_divide_dim(cfg.heads, cfg.dim)
    if num_outputs != inputs.vocab_size:
        raise ConfigError(
            f"model.type gpt predicts the next token, so it needs one output per token of the vocabulary ({inputs.vocab_size:,}),"
            f" not {num_outputs:,}; to classify or score text use transformer, rnn, attention or textcnn"
        )
    if inputs.shape and inputs.shape[0] > cfg.context:
        raise ConfigError(f"model.context {cfg.context} is shorter than the inputs ({inputs.describe()}); raise it to at least {inputs.shape[0]}")
    return GPT(cfg, inputs.vocab_size)
