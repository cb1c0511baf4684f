"""Text generation with a language model (a ``gpt``, or a pretrained causal LM of type ``hf``): one
token at a time, each yielded as soon as it is chosen.

    for token in generate(model, prompt_ids, 100, temperature=0.8, top_k=50, seed=0):
        print(tokenizer.decode([token]), end="", flush=True)

Each step scores the next token from the tokens so far and picks one: the most likely (temperature 0),
or a draw from the softmax of logits / temperature, after keeping only the ``top_k`` most likely tokens
and then the smallest set of those whose probability reaches ``top_p`` (nucleus sampling).

With the key/value cache (the default) the prompt is read once and every later step reads one new
position. The model only knows ``context`` positions: once the sequence is longer, each step reads its
last ``context`` tokens afresh (the positions of all of them shift by one, so their cached keys no
longer apply), which is what generation without the cache does at every step. The cache gives the
same tokens as no cache, only faster, up to the context; past it both cost the same.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Iterator, Optional, Protocol, Union

import torch
from torch import Tensor


class LanguageModel(Protocol):
    """What generation needs of a model: ``context`` (positions it reads at most), ``new_cache()``
    (an empty key/value cache with ``length`` and ``reset()``), and ``model(ids, cache)`` returning
    N x T x vocabulary logits (``GPT`` and ``hf.PretrainedLM`` both are one)."""

    context: int

    def new_cache(self) -> Any: ...

    def __call__(self, ids: Tensor, cache: Any = None) -> Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    @property
    def training(self) -> bool: ...


def generate(
    model: LanguageModel,
    prompt: Union[list[int], Tensor],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    eos_id: Optional[int] = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Continue ``prompt``, yielding each new token id as soon as it is chosen.

    The model runs in eval mode under ``torch.no_grad`` during each step; its training mode is put
    back after every step, so stopping the iteration early leaves the model as it was.

    Args:
        model: a language model (a GPT, or a pretrained causal LM), on the device to run on.
        prompt: the token ids to continue (a list, or a 1-D or 1 x T tensor); not empty (begin with
            a BOS token or a space). Only its last ``model.context`` tokens are read.
        max_new_tokens: how many tokens to generate at most.
        temperature: divides the logits before sampling: below 1 sharper, above 1 flatter; 0 picks
            the most likely token every step (greedy; ``top_k``, ``top_p`` and ``seed`` are unused).
        top_k: sample only among the k most likely tokens (None: all).
        top_p: then only among the most likely tokens whose probabilities, renormalised over what
            ``top_k`` left, first add up to ``top_p`` or more (None or 1: all).
        seed: seeds the sampling generator (on the model's device), so the same seed gives the
            same tokens; None: a fresh random seed.
        eos_id: stop after yielding this token.
        use_cache: keep the keys and values of the tokens read (``model.new_cache()``); False re-reads the whole
            window every step (slower; the same tokens).

    Returns:
        An iterator over the new token ids.

    Raises:
        ValueError: an empty prompt or a prompt of several rows, a negative ``max_new_tokens`` or
            ``temperature``, ``top_k`` below 1 or ``top_p`` outside (0, 1]. Raised by this call,
            before the first token.
    """
    if isinstance(prompt, Tensor):
        if prompt.dim() > 2 or (prompt.dim() == 2 and prompt.shape[0] != 1):
            raise ValueError(f"generate continues one prompt at a time; got a tensor of shape {tuple(prompt.shape)}")
        tokens = [int(token) for token in prompt.flatten().tolist()]
    else:
        tokens = [int(token) for token in prompt]
    if not tokens:
        raise ValueError("the prompt is empty: give at least one token (a BOS token or a space)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, not {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or more, not {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be 1 or more (or None for all tokens), not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be above 0 and at most 1 (or None for all tokens), not {top_p}")
    return _generate(model, tokens, max_new_tokens, temperature, top_k, top_p, seed, eos_id, use_cache)


def _generate(
    model: LanguageModel,
    tokens: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: Optional[int],
    top_p: Optional[float],
    seed: Optional[int],
    eos_id: Optional[int],
    use_cache: bool,
) -> Iterator[int]:
    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    window: deque[int] = deque(tokens, maxlen=model.context)  # all the model can read
    cache = model.new_cache() if use_cache else None
    logits = _last_logits(model, window, cache, device)
    for step in range(max_new_tokens):
        token = _choose(logits, temperature, top_k, top_p, generator)
        yield token
        if token == eos_id or step == max_new_tokens - 1:
            return
        window.append(token)
        if cache is not None and cache.length < model.context:
            logits = _last_logits(model, [token], cache, device)
        else:  # no cache, or a full one: read the whole window again (into an emptied cache)
            if cache is not None:
                cache.reset()
            logits = _last_logits(model, window, cache, device)


def _last_logits(model: LanguageModel, ids: Iterable[int], cache: Any, device: torch.device) -> Tensor:
    """The logits after the last of ``ids`` (a vocabulary-long vector), in eval mode without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.tensor([list(ids)], dtype=torch.long, device=device), cache)[0, -1]
    finally:
        model.train(was_training)


def _choose(logits: Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float], generator: torch.Generator) -> int:
    """Pick the next token from a vocabulary-long vector of logits (see ``generate``)."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(descending=True)
        probabilities = sorted_logits.softmax(-1)
        # drop a token once the tokens ranked above it hold top_p already; the most likely always stays
        drop = probabilities.cumsum(-1) - probabilities >= top_p
        logits = logits.index_fill(0, order[drop], float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
