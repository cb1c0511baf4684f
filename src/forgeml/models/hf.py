"""A pretrained Hugging Face model: an encoder with a new classification or regression head, or a
causal language model to fine-tune on a corpus; either optionally with LoRA.

For rows (features and a target), ``AutoModelForSequenceClassification`` (or ``AutoModel`` and a
mean-pooling head, ``pooling``) loads the pretrained network (``pretrained:``, resolved by
``forgeml.pretrained``: a local directory, a GGUF file, a hub id, or the bundled all-MiniLM-L6-v2)
with a fresh head of ``num_outputs`` logits; forgeml computes the loss from them, as for every model.
It reads token ids made by the same model's tokenizer (a text feature with ``tokenizer: pretrained``),
and the attention mask is ``ids != pad_id``, as for every token model here.

For a corpus (``data.corpus`` with ``tokenizer: pretrained``), ``AutoModelForCausalLM`` loads the
model with its own output layer, and it is trained to predict each next token of ``context``-long
windows, as a ``gpt`` is; ``forgeml generate`` continues text with it through its key/value cache.

Fine-tuning is full, partly frozen (``freeze``), or low-rank adapters through peft (``adapter``):
only the adapters and the head train. Runs and checkpoints then store just those tensors
(``training.checkpoint.state_dict_tensors``: a few hundred KB, not the whole model), and ``merge``
folds the adapters into the base weights, giving the ordinary model later stages (export, serve) expect.
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from typing import Any, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from forgeml.config import Section
from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.models.layers import masked_mean, padding_mask, require_input_kind
from forgeml.pretrained import SMOLLM2, ResolvedModel, load_tokenizer, quiet_transformers, resolve
from forgeml.registry import MODELS

ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "camembert")  # not causal LMs
MATCHING_TEXT_FEATURE = "use data.features: [{type: text, tokenizer: pretrained, ...}] with the same pretrained model"


class LoRAConfig(Section):
    """Low-rank adapters (Hu et al. 2021): W x + (alpha / r) B A x, with only A and B (and the head) trained."""

    type: Literal["lora"] = Field(description="LoRA adapters through peft.")
    r: int = Field(8, ge=1, description="Rank of each adapter; higher: more capacity and more trained parameters.")
    alpha: int = Field(16, ge=1, description="Scale of the adapters' output, alpha / r; usually 2 x r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: Optional[list[str]] = Field(
        None, description="Names of the linear layers that get adapters (e.g. [query, value]); null: peft's default for the architecture."
    )


class HFConfig(Section):
    """A pretrained transformers model (AutoModelForSequenceClassification) with a new head; full, frozen or LoRA fine-tuning."""

    type: Literal["hf"] = Field(description="Pretrained Hugging Face model.")
    pretrained: Optional[str] = Field(
        None, description="A local model directory or Hugging Face hub id; null: all-MiniLM-L6-v2 (bundled, offline). Same as the text feature's."
    )
    freeze: Literal["none", "encoder", "layers"] = Field(
        "none",
        description="none: train everything; encoder: train only the new head; layers: freeze the embeddings and the first freeze_layers layers.",
    )
    freeze_layers: int = Field(0, ge=0, description="freeze: layers: how many of the first transformer layers stay fixed.")
    pooling: Literal["auto", "head", "mean"] = Field(
        "auto",
        description="head: transformers' own classification head (BERT: the [CLS] pooler); mean: a linear head on the mean of the "
        "last hidden states; auto: mean for sentence-transformers models trained with mean pooling (all-MiniLM-L6-v2), else head.",
    )
    adapter: Optional[LoRAConfig] = Field(None, description="Train low-rank adapters (and the head) instead of the pretrained weights.")
    context: int = Field(
        256, ge=2, description="Language modelling (data.corpus): tokens per training window, and what generation reads at most."
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute each layer during the backward pass instead of storing its activations: less memory, more compute."
    )


class PretrainedClassifier(nn.Module):
    """Token ids in, logits out: wraps the transformers (or peft) network and makes its attention mask.

    Without ``head`` the network is a sequence-classification model and its logits are the output;
    with one, the network is a bare encoder and ``head`` reads the mean of its last hidden states
    over the real (non-padding) tokens.
    """

    def __init__(self, network: nn.Module, pad_id: int, resolved: ResolvedModel, head: Optional[nn.Module] = None):
        super().__init__()
        self.network = network
        self.head = head
        self.pad_id = pad_id
        self.resolved = resolved  # which base model this is: for forgeml.pretrained.identity

    def forward(self, ids: Tensor) -> Tensor:
        mask = padding_mask(ids, self.pad_id)
        outputs = self.network(input_ids=ids, attention_mask=mask.long())
        if self.head is None:
            return outputs.logits
        return self.head(masked_mean(outputs.last_hidden_state, mask))


class PretrainedCache:
    """Generation's key/value cache for a ``PretrainedLM`` (the interface of ``gpt.KVCache``): the
    transformers cache object of the positions read so far, and how many there are."""

    def __init__(self) -> None:
        self.past: Any = None
        self.length = 0

    def reset(self) -> None:
        self.past, self.length = None, 0


class PretrainedLM(nn.Module):
    """Token ids N x T in, next-token logits N x T x vocabulary out: a transformers (or peft) causal LM.

    Windows of a corpus are never padded, so there is no attention mask; ``context`` is the window
    length it was trained on, which generation reads at most (as for a ``gpt``).
    """

    def __init__(self, network: nn.Module, resolved: ResolvedModel, context: int):
        super().__init__()
        self.network = network
        self.resolved = resolved
        self.context = context
        # transformers 5 renamed past_key_values to cache; models not yet moved over keep the old name
        base = network.get_base_model() if hasattr(network, "get_base_model") else network
        self._cache_argument = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def new_cache(self) -> PretrainedCache:
        return PretrainedCache()

    def forward(self, ids: Tensor, cache: Optional[PretrainedCache] = None) -> Tensor:
        if cache is None:
            return self.network(input_ids=ids, use_cache=False).logits
        outputs = self.network(input_ids=ids, use_cache=True, **{self._cache_argument: cache.past})
        past = getattr(outputs, "cache", None)
        cache.past = past if past is not None else outputs.past_key_values
        cache.length += ids.shape[1]
        return outputs.logits


def _mean_pooled_by_training(resolved: ResolvedModel) -> bool:
    """Whether the model directory is a sentence-transformers model whose embedding is the token mean."""
    pooling = resolved.local_dir / "1_Pooling" / "config.json"
    try:
        return bool(json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"))
    except (OSError, ValueError, AttributeError):
        return False


def _layer_list(backbone: nn.Module, layers: int) -> tuple[str, nn.ModuleList]:
    """The backbone's stack of transformer layers: the first ModuleList as long as the config says."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == layers:
            return name, module
    raise ConfigError(f"model.freeze: layers: cannot find the {layers} transformer layers of this model; use freeze: encoder or none")


def _freeze(network: nn.Module, cfg: HFConfig) -> None:
    backbone = network.base_model  # everything but the head (BertModel inside BertForSequenceClassification)
    if cfg.freeze == "encoder":
        backbone.requires_grad_(False)
        return
    layers = int(getattr(network.config, "num_hidden_layers", 0) or 0)
    if cfg.freeze_layers > layers:
        raise ConfigError(f"model.freeze_layers {cfg.freeze_layers} is more than the model's {layers} layers")
    prefix, stack = _layer_list(backbone, layers)
    frozen = {id(p) for layer in stack[: cfg.freeze_layers] for p in layer.parameters()}
    in_stack = {id(p) for p in stack.parameters()}
    # parameters registered before the layer stack are the embeddings; those after it (pooler, final norm) stay trainable
    before_stack = True
    for _, parameter in backbone.named_parameters():
        if id(parameter) in in_stack:
            before_stack = False
        if id(parameter) in frozen or (before_stack and id(parameter) not in in_stack):
            parameter.requires_grad_(False)


def _with_lora(network: nn.Module, cfg: LoRAConfig, task: str) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # SEQ_CLS keeps transformers' new head trainable (peft wraps it as a module to save); a forgeml head
    # sits outside the peft model (FEATURE_EXTRACTION) and trains as any module does
    lora = LoraConfig(task_type=task, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules)
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5: nothing a user can act on
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(network, lora)
    except ValueError as exc:  # no default target modules for the architecture, or a name that matches nothing
        raise ConfigError(f"model.adapter.target_modules: {str(exc).splitlines()[0]}; name the linear layers to adapt, e.g. [query, value]") from None


@MODELS.register("hf", HFConfig)
def build_hf(cfg: HFConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    """Load the pretrained model with a new head of ``num_outputs`` logits.

    Raises:
        ConfigError: the inputs are not token ids from this model's tokenizer, are longer than the
            model takes, or the freeze / adapter options do not fit the model.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    require_input_kind("hf", inputs, ("tokens",))
    resolved = resolve(cfg.pretrained)
    if inputs.next_token:
        return _build_causal_lm(cfg, inputs, resolved)
    vocabulary = load_tokenizer(resolved).tokenizer.get_vocab_size()
    if inputs.vocab_size != vocabulary:
        raise ConfigError(
            f"model type hf ({resolved.path_or_id}) reads ids from its own tokenizer of {vocabulary:,} tokens, "
            f"the data gives {inputs.describe()}; {MATCHING_TEXT_FEATURE}"
        )
    if cfg.adapter is not None and cfg.freeze != "none":
        raise ConfigError("model.freeze: with an adapter the pretrained weights are frozen already; leave freeze: none")
    pooling = cfg.pooling if cfg.pooling != "auto" else ("mean" if _mean_pooled_by_training(resolved) else "head")
    problem = "regression" if num_outputs == 1 else "single_label_classification"
    head: Optional[nn.Module] = None
    with quiet_transformers():
        if pooling == "head":
            network = AutoModelForSequenceClassification.from_pretrained(
                str(resolved.local_dir), num_labels=num_outputs, problem_type=problem, dtype=torch.float32
            )
        else:
            network = AutoModel.from_pretrained(str(resolved.local_dir), dtype=torch.float32)
    if pooling == "mean":
        if isinstance(getattr(network, "pooler", None), nn.Module):  # BERT's [CLS] pooler: unused here (forward skips a None one)
            network.pooler = None
        hidden = int(network.config.hidden_size)
        dropout = getattr(network.config, "classifier_dropout", None) or getattr(network.config, "hidden_dropout_prob", 0.1)
        head = nn.Sequential(nn.Dropout(float(dropout)), nn.Linear(hidden, num_outputs))
        nn.init.normal_(head[1].weight, std=float(getattr(network.config, "initializer_range", 0.02)))
        nn.init.zeros_(head[1].bias)
    positions = getattr(network.config, "max_position_embeddings", None)
    if positions is not None and inputs.shape[0] > positions:
        raise ConfigError(f"the inputs ({inputs.describe()}) are longer than {resolved.path_or_id} takes ({positions}); set the text feature's max_length")
    if getattr(network.config, "pad_token_id", None) is None:
        network.config.pad_token_id = inputs.pad_id  # decoder models find the last real token by it
    _prepare_training(network, cfg)
    if cfg.adapter is not None:
        network = _with_lora(network, cfg.adapter, "SEQ_CLS" if head is None else "FEATURE_EXTRACTION")
    return PretrainedClassifier(network, inputs.pad_id, resolved, head)


def _prepare_training(network: nn.Module, cfg: HFConfig) -> None:
    if cfg.freeze != "none":
        _freeze(network, cfg)
    if cfg.activation_checkpointing:
        if not getattr(network, "supports_gradient_checkpointing", False):
            raise ConfigError(f"model.activation_checkpointing: {type(network).__name__} does not support it in transformers")
        enable = getattr(network, "activation_checkpointing_enable", None)  # transformers >= 5.2; older: gradient_...
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _build_causal_lm(cfg: HFConfig, inputs: InputSpec, resolved: ResolvedModel) -> nn.Module:
    """The pretrained model with its language-modelling head, for next-token training on a corpus."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(resolved.local_dir), **resolved.load_kwargs())
        model_type = getattr(config, "model_type", "")
        # BERT-like encoders have a masked-LM head transformers can run left to right, but were not trained to
        if model_type in ENCODERS or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ConfigError(
                f"model type hf: {resolved.description} ({model_type or 'unknown type'}) is not a causal language model, which "
                f"language modelling (data.corpus) needs; e.g. pretrained: {SMOLLM2}"
            )
        # the config read above, not read again (for a GGUF file, parsing its metadata a second time)
        network = AutoModelForCausalLM.from_pretrained(str(resolved.local_dir), config=config, dtype=torch.float32, **resolved.load_kwargs())
    vocabulary = network.get_output_embeddings().weight.shape[0]
    if inputs.vocab_size > vocabulary:
        raise ConfigError(
            f"model type hf ({resolved.path_or_id}) predicts {vocabulary:,} tokens, the corpus has {inputs.vocab_size:,}; "
            "use data.corpus.tokenizer: pretrained, the model's own"
        )
    positions = getattr(network.config, "max_position_embeddings", None)
    if positions is not None and cfg.context > positions:
        raise ConfigError(f"model.context {cfg.context} is longer than {resolved.path_or_id} takes ({positions})")
    if inputs.shape[0] != cfg.context:
        raise ConfigError(f"the corpus windows are {inputs.shape[0]} tokens, model.context is {cfg.context}")
    _prepare_training(network, cfg)
    if cfg.adapter is not None:
        network = _with_lora(network, cfg.adapter, "CAUSAL_LM")
    return PretrainedLM(network, resolved, cfg.context)


def trainable_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, e.g. for a log line 'training 0.3% of 22.7M parameters'."""
    parameters = list(module.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def is_adapted(module: nn.Module) -> bool:
    """Whether ``module`` carries peft adapters (so ``merge`` has something to do)."""
    if not isinstance(module, (PretrainedClassifier, PretrainedLM)):  # any other model: no need to import peft
        return False
    from peft import PeftModel

    return isinstance(getattr(module, "network", None), PeftModel)


def merge(module: nn.Module) -> nn.Module:
    """An ordinary model with the LoRA weights folded into the base weights; ``module`` is left as it was.

    The result computes what ``module`` does (up to float rounding) with no peft in it, and its
    state dict has the keys of the same ``hf`` model built without ``adapter``, so later stages load
    it from a config with the adapter removed. A module without adapters is returned unchanged.
    """
    if not is_adapted(module):
        return module
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5: nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        merged_network = copy.deepcopy(module.network).merge_and_unload()
    if isinstance(module, PretrainedLM):
        merged: nn.Module = PretrainedLM(merged_network, module.resolved, module.context)
    else:
        merged = PretrainedClassifier(merged_network, module.pad_id, module.resolved, copy.deepcopy(module.head))
    merged.requires_grad_(True)  # an ordinary model again: nothing frozen by the adapter remains
    return merged.train(module.training)


def describe(module: nn.Module) -> dict[str, Any]:
    """Trainable / total parameter counts and the base model, for the run's log."""
    trainable, total = trainable_parameters(module)
    return {"base": module.resolved.description, "trainable": trainable, "total": total, "adapted": is_adapted(module)}
