"""GPT and generation: shapes, causality, weight tying through a checkpoint, init, the key/value cache, sampling, learning."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.models.generation import generate
from forgeml.models.gpt import GPT, KVCache, flops_per_token, num_parameters
from forgeml.registry import MODELS
from forgeml.training.checkpoint import state_dict_tensors

pytestmark = pytest.mark.usefixtures("single_thread_torch")

VOCAB = 50
CONTEXT = 16
TOKENS = InputSpec("tokens", (CONTEXT,), vocab_size=VOCAB)
TINY = {"type": "gpt", "layers": 2, "heads": 2, "dim": 32, "context": CONTEXT}


def build(cfg: dict[str, Any], inputs: InputSpec = TOKENS, num_outputs: int = VOCAB) -> GPT:
    """A GPT built through the registry from a config dict."""
    config = MODELS.get(cfg["type"]).config.model_validate(cfg)
    return MODELS.build(config, inputs=inputs, num_outputs=num_outputs)


def lively(model: GPT) -> GPT:
    """The model with large random weights, so that its greedy choices depend on the whole context.

    At the usual 0.02 init every position's logits are nearly alike and greedy decoding repeats one
    token, which would let a cache bug slip through a token-for-token comparison.
    """
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return model.eval()


def random_ids(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def reference_greedy(model: GPT, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding the plain way: re-read the last ``context`` tokens for every new token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(torch.tensor([ids[-model.context :]]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_shapes_and_defaults():
    torch.manual_seed(0)
    model = build(TINY)
    logits = model(random_ids(3, CONTEXT))
    assert logits.shape == (3, CONTEXT, VOCAB) and logits.dtype == torch.float32
    assert model(random_ids(2, 5)).shape == (2, 5, VOCAB)  # shorter than the context
    defaults = MODELS.get("gpt").config.model_validate({"type": "gpt"})
    assert (defaults.layers, defaults.heads, defaults.dim, defaults.context) == (6, 6, 384, 256)
    assert (defaults.dropout, defaults.bias, defaults.tie_weights, defaults.activation_checkpointing) == (0.1, True, True, False)


def test_causal_changing_a_token_changes_only_later_positions():
    torch.manual_seed(0)
    model = lively(build(TINY))
    ids = random_ids(1, CONTEXT)
    changed = ids.clone()
    changed[0, 9] = (ids[0, 9] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert torch.equal(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_tied_weights_survive_a_safetensors_checkpoint():
    torch.manual_seed(0)
    model = build(TINY)
    assert model.head.weight.data_ptr() == model.token_embedding.weight.data_ptr()
    assert {"head.weight", "token_embedding.weight"} <= set(model.state_dict())
    # the repo's checkpoint path: state_dict_tensors copies each name, so safetensors sees no sharing
    saved = save_tensors(state_dict_tensors(model))
    torch.manual_seed(1)
    loaded = build(TINY)
    loaded.load_state_dict(load_tensors(saved))
    assert loaded.head.weight is loaded.token_embedding.weight
    assert torch.equal(loaded.token_embedding.weight, model.token_embedding.weight)
    ids = random_ids(2, 8)
    assert torch.equal(loaded.eval()(ids), model.eval()(ids))
    # a training step moves the one shared matrix, so the tie holds afterwards too
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.1)
    nn.functional.cross_entropy(loaded.train()(ids).flatten(0, 1), ids.flatten()).backward()
    optimizer.step()
    assert loaded.head.weight is loaded.token_embedding.weight
    assert not torch.equal(loaded.token_embedding.weight, model.token_embedding.weight)
    untied = build({**TINY, "tie_weights": False})
    assert untied.head.weight.data_ptr() != untied.token_embedding.weight.data_ptr()


def test_init_scales_the_residual_projections_by_depth():
    torch.manual_seed(0)
    layers = 4
    model = build({"type": "gpt", "layers": layers, "heads": 2, "dim": 64, "context": CONTEXT})
    scaled = torch.cat([w.flatten() for block in model.blocks for w in (block.attention.out.weight, block.mlp[2].weight)])
    plain = torch.cat([w.flatten() for block in model.blocks for w in (block.attention.qkv.weight, block.mlp[0].weight)])
    assert scaled.std().item() == pytest.approx(0.02 / math.sqrt(2 * layers), rel=0.03)
    assert plain.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(module.bias.abs().sum() == 0 for module in model.modules() if isinstance(module, nn.Linear) and module.bias is not None)


def test_parameter_count_and_flops():
    model = build(TINY)
    # embedding 50 x 32, positions 16 x 32; a block: two LayerNorms, qkv, out, MLP 32 -> 128 -> 32; final LayerNorm; tied head
    block = 2 * 64 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)
    assert num_parameters(model, non_embedding=False) == 50 * 32 + 16 * 32 + 2 * block + 64 == 27584
    assert num_parameters(model) == 27584 - 16 * 32  # tied: the token embedding is also the output layer
    assert num_parameters(build({**TINY, "tie_weights": False})) == 27584 - 16 * 32
    assert num_parameters(build({**TINY, "tie_weights": False}), non_embedding=False) == 27584 + 50 * 32
    no_bias = build({**TINY, "bias": False})
    assert num_parameters(no_bias, non_embedding=False) == 27584 - 2 * (2 * 32 + 96 + 32 + 128 + 32) - 32
    config = MODELS.get("gpt").config.model_validate(TINY)
    assert flops_per_token(config, 27072, CONTEXT) == 6 * 27072 + 12 * 2 * 2 * 16 * CONTEXT == 174720


def test_cached_logits_equal_the_full_forward():
    torch.manual_seed(0)
    model = lively(build(TINY))
    ids = random_ids(2, 12)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.context)
        prefix = model(ids[:, :7], cache)  # a prompt into an empty cache
        one = model(ids[:, 7:8], cache)  # one token
        chunk = model(ids[:, 8:12], cache)  # several tokens after cached ones: the general mask
    assert cache.length == 12
    assert torch.allclose(prefix, full[:, :7], atol=1e-5)
    assert torch.allclose(one[:, 0], full[:, 7], atol=1e-5)
    assert torch.allclose(chunk, full[:, 8:12], atol=1e-5)
    with pytest.raises(ValueError, match="5 tokens after 12 cached positions run past the GPT's context of 16"):
        model(ids[:, :5], cache)


@pytest.mark.parametrize("new_tokens", [8, 40], ids=["within-context", "past-context"])
def test_cached_greedy_generation_equals_uncached(new_tokens: int):
    torch.manual_seed(0)
    model = lively(build(TINY))
    prompt = random_ids(1, 5)[0].tolist()
    expected = reference_greedy(model, prompt, new_tokens)
    assert len(set(expected)) >= 3  # the model's choices vary, so a wrong cache would show
    assert list(generate(model, prompt, new_tokens, temperature=0)) == expected
    assert list(generate(model, prompt, new_tokens, temperature=0, use_cache=False)) == expected
    # a prompt longer than the context: only its last 16 tokens are read
    long_prompt = random_ids(1, 25, seed=3)[0].tolist()
    assert list(generate(model, long_prompt, 6, temperature=0)) == reference_greedy(model, long_prompt, 6)


def test_sampling_is_reproducible_and_filters_narrow_to_greedy():
    torch.manual_seed(0)
    model = lively(build(TINY))
    prompt = torch.tensor([3, 1, 4])
    greedy = list(generate(model, prompt, 20, temperature=0))
    first = list(generate(model, prompt, 20, seed=7))
    assert len(first) == 20 and all(0 <= token < VOCAB for token in first)
    assert list(generate(model, prompt, 20, seed=7)) == first
    assert list(generate(model, prompt, 20, seed=7, use_cache=False)) == first
    assert list(generate(model, prompt, 20, seed=8)) != first
    assert list(generate(model, prompt, 20, seed=7, top_k=1)) == greedy
    assert list(generate(model, prompt, 20, seed=7, top_p=1e-6)) == greedy
    assert list(generate(model, prompt, 20, seed=7, temperature=1e-4)) == greedy  # very cold is greedy too


def test_generation_streams_stops_and_restores_training_mode():
    torch.manual_seed(0)
    model = lively(build(TINY)).train()
    tokens = generate(model, [1, 2], 10, temperature=0)
    first = next(tokens)
    assert model.training  # between tokens the model is as the caller left it
    expected = list(generate(model, [1, 2], 10, temperature=0))
    assert [first, *tokens] == expected
    stop = expected[3]
    assert list(generate(model, [1, 2], 10, temperature=0, eos_id=stop)) == expected[: expected.index(stop) + 1]
    assert list(generate(model, [1, 2], 0)) == []
    assert model.training and all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": []}, "the prompt is empty: give at least one token (a BOS token or a space)"),
        ({"prompt": torch.zeros(2, 3, dtype=torch.long)}, "generate continues one prompt at a time; got a tensor of shape (2, 3)"),
        ({"temperature": -1.0}, "temperature must be 0 (greedy) or more, not -1.0"),
        ({"top_k": 0}, "top_k must be 1 or more (or None for all tokens), not 0"),
        ({"top_p": 0.0}, "top_p must be above 0 and at most 1 (or None for all tokens), not 0.0"),
        ({"max_new_tokens": -1}, "max_new_tokens must be 0 or more, not -1"),
    ],
    ids=["empty", "batch", "temperature", "top-k", "top-p", "max-new-tokens"],
)
def test_generation_argument_errors(kwargs: dict[str, Any], message: str):
    model = build(TINY)
    arguments = {"prompt": [1], "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError) as info:
        generate(model, arguments.pop("prompt"), arguments.pop("max_new_tokens"), **arguments)  # raised before iterating
    assert str(info.value) == message


def test_learns_a_token_pattern():
    """Pinned: a fixed seed and 30 Adam steps on a repeating pattern end at this loss."""
    torch.manual_seed(0)
    model = build({**TINY, "dropout": 0.0})
    pattern = torch.tensor([7, 3, 41, 3, 19, 26, 0, 12, 33])  # 3 is followed by 41 or 19: position matters
    stream = pattern.repeat(8)
    ids = torch.stack([stream[start : start + CONTEXT + 1] for start in range(8)])  # inputs and next tokens
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * math.log(VOCAB)
    assert loss.item() == pytest.approx(0.4874, rel=1e-3)


def test_activation_checkpointing_gives_the_same_gradients():
    ids = random_ids(2, CONTEXT)
    gradients = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = build({**TINY, "dropout": 0.2, "activation_checkpointing": recompute})
        torch.manual_seed(1)  # the same dropout masks; checkpointing replays them in the recompute
        nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
        gradients.append({name: parameter.grad.clone() for name, parameter in model.named_parameters()})
    plain, recomputed = gradients
    assert plain.keys() == recomputed.keys()
    for name in plain:
        assert torch.allclose(plain[name], recomputed[name], atol=1e-6), name


def test_longer_than_the_context():
    model = build(TINY)
    with pytest.raises(ValueError) as info:
        model(random_ids(1, CONTEXT + 1))
    assert str(info.value) == "17 tokens are longer than the GPT's context of 16; crop the input to its last 16 tokens"


@pytest.mark.parametrize(
    "cfg, inputs, num_outputs, message",
    [
        (TINY, InputSpec("sequence", (16, 2)), 1,
         "model.type gpt needs text (token ids); this data gives windows of 16 steps x 2 values: use rnn, attention, transformer, mlp or linear"),
        (TINY, InputSpec("vector", (5,)), VOCAB,
         "model.type gpt needs text (token ids); this data gives a vector of 5 numbers: use mlp or linear"),
        (TINY, TOKENS, 2,
         "model.type gpt predicts the next token, so it needs one output per token of the vocabulary (50), not 2;"
         " to classify or score text use transformer, rnn, attention or textcnn"),
        ({**TINY, "heads": 3}, TOKENS, VOCAB, "model.heads 3 does not divide model.dim 32"),
        ({**TINY, "context": 8}, TOKENS, VOCAB,
         "model.context 8 is shorter than the inputs (token ids (length 16, vocabulary 50)); raise it to at least 16"),
    ],
    ids=["sequence", "vector", "outputs", "heads", "context"],
)
def test_configuration_errors(cfg: dict[str, Any], inputs: InputSpec, num_outputs: int, message: str):
    with pytest.raises(ConfigError) as info:
        build(cfg, inputs, num_outputs)
    assert str(info.value) == message
