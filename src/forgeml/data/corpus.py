"""A text corpus for language modelling: tokenized once into memory-mapped token-id files.

    data:
      source: kjv
      corpus: {column: text, tokenizer: bpe, vocab_size: 8192}

The rows of the source's text column are joined (each followed by ``separator``) into one stream of
tokens. Rows go to train / validation / test in seeded blocks of consecutive rows, so held-out text
is whole passages, not single lines whose neighbours were trained on. A Hugging Face ``tokenizers``
tokenizer (byte-level BPE, or characters) is trained on the training text (or a pretrained model's
own is used as it is: ``tokenizer: pretrained``, for fine-tuning that model), saved as
``tokenizer.json``, and each split's ids are written to ``tokens/<split>.bin`` (uint16 or uint32,
raw) in the run directory. Training reads random windows from those files through ``np.memmap``,
so a corpus far larger than memory trains the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from forgeml.config import CorpusConfig
from forgeml.data.dataset import SPLITS, split_rows
from forgeml.data.table import Table
from forgeml.errors import DataError
from forgeml.inputs import InputSpec

if TYPE_CHECKING:  # torch is imported where batches are made: the edge runtime reads a corpus's tokenizer without it
    import torch

TOKENS_DIR = "tokens"
TOKENIZER_FILE = "tokenizer.json"
END_OF_TEXT = "<|endoftext|>"
UNKNOWN_CHAR = "<unk>"
BLOCK_ROWS = 64  # rows per block when assigning rows to splits: held-out text comes in passages
EVALUATION_WINDOWS = 256  # held-out windows a language model is scored on per split: a fixed, evenly spread sample


def block_split(rows: int, validation: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Rows per split, assigned in seeded blocks of consecutive rows: up to ``BLOCK_ROWS`` rows a
    block, fewer for a short text, so that there are about 100 blocks to share out."""
    size = max(1, min(BLOCK_ROWS, rows // 100))
    blocks = split_rows(math.ceil(rows / size), validation, test, seed)
    return {
        name: np.array([row for block in chosen for row in range(block * size, min((block + 1) * size, rows))], dtype=np.int64)
        for name, chosen in blocks.items()
    }


class Corpus:
    """The tokenizer and the token files of a language-modelling run.

    Args:
        cfg: the ``data.corpus`` section.
        context: the model's context length (windows are this long).
        pretrained: with ``tokenizer: pretrained``, the model whose tokenizer to use (``model.pretrained``).
    """

    task = "language_modelling"
    VERSION = 1

    def __init__(self, cfg: CorpusConfig, context: int, pretrained: Optional[str] = None):
        self.cfg = cfg
        self.context = context
        self.pretrained = pretrained
        self.tokenizer: Any = None
        self.token_counts: dict[str, int] = {}
        # a pretrained tokenizer's chat template and end-of-turn token (forgeml serve's chat endpoint)
        self.chat: Optional[dict[str, Any]] = None

    # -- the tokenizer

    def _train_tokenizer(self, texts: list[str]) -> Any:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        if self.cfg.tokenizer == "pretrained":
            from forgeml.pretrained import load_tokenizer, resolve

            loaded = load_tokenizer(resolve(self.pretrained))
            self.chat = loaded.chat
            return loaded.tokenizer
        if self.cfg.tokenizer == "bpe":
            tokenizer = Tokenizer(models.BPE())
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=self.cfg.vocab_size,
                special_tokens=[END_OF_TEXT],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            )
        else:
            tokenizer = Tokenizer(models.WordLevel(unk_token=UNKNOWN_CHAR))
            tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
            tokenizer.decoder = decoders.Fuse()
            trainer = trainers.WordLevelTrainer(vocab_size=2**31, min_frequency=1, special_tokens=[UNKNOWN_CHAR], show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 2**16 else np.uint32)

    @property
    def input_spec(self) -> InputSpec:
        # pad_id -1: language-model windows are never padded
        return InputSpec("tokens", (self.context,), vocab_size=self.vocab_size, pad_id=-1)

    @property
    def num_outputs(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        # no special tokens: the token files hold none either (a pretrained tokenizer may add a BOS)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(list(ids)))

    # -- building the token files

    def build(self, table: Table, split_cfg: Any, seed: int, directory: Path) -> None:
        """Split the rows, train the tokenizer on the training rows, write ``tokens/<split>.bin``.

        Raises:
            DataError: the column is missing, the text is empty, or the training split is too short
                for one window.
        """
        if self.cfg.column not in table.columns:
            raise DataError(f"{', '.join(table.origins[:3])}: no column named {self.cfg.column!r} (columns: {', '.join(table.columns)})")
        column = table.columns[self.cfg.column]
        texts = ["" if value is None else str(value) for value in column]
        rows = block_split(len(texts), split_cfg.validation, split_cfg.test, seed)
        separator = self.cfg.separator
        train_texts = [texts[i] + separator for i in rows["train"]]
        if not any(t.strip() for t in train_texts):
            raise DataError(f"data.corpus: the training rows of column {self.cfg.column!r} hold no text")
        self.tokenizer = self._train_tokenizer(train_texts)
        directory.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            ids = self._encode_rows([texts[i] + separator for i in rows[name]])
            self.token_counts[name] = int(len(ids))
            temporary = directory / f".{name}.bin.tmp"
            ids.tofile(temporary)
            temporary.replace(directory / f"{name}.bin")
        if self.token_counts["train"] <= self.context:
            raise DataError(
                f"data.corpus: the training text is {self.token_counts['train']} tokens, not enough for one window of "
                f"{self.context} (model.context); use more text or a shorter context"
            )

    def _encode_rows(self, texts: list[str]) -> np.ndarray:
        ids = np.empty(0, dtype=self.dtype)
        chunks = []
        for start in range(0, len(texts), 4096):  # encode_batch runs in parallel (Rust threads)
            chunks.extend(np.asarray(e.ids, dtype=self.dtype) for e in self.tokenizer.encode_batch(texts[start : start + 4096], add_special_tokens=False))
        return np.concatenate(chunks) if chunks else ids

    def tokens(self, directory: Path, split: str) -> np.ndarray:
        """The token ids of a split, memory-mapped read-only (nothing is loaded until it is read)."""
        path = directory / f"{split}.bin"
        if not path.is_file():
            raise DataError(f"{path}: missing; the run's token files are incomplete")
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r")

    # -- state

    def to_state(self) -> dict[str, Any]:
        return {
            "version": self.VERSION,
            "task": self.task,
            "corpus": self.cfg.model_dump(mode="json"),
            "context": self.context,
            "tokenizer": TOKENIZER_FILE,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "tokens": dict(self.token_counts),
            "input": self.input_spec.to_dict(),
            **({"chat": self.chat} if self.chat else {}),
        }

    def files(self) -> dict[str, bytes]:
        return {TOKENIZER_FILE: self.tokenizer.to_str(pretty=True).encode()}

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any) -> "Corpus":
        from tokenizers import Tokenizer

        if state.get("version") != cls.VERSION:
            raise DataError(f"features.json has corpus version {state.get('version')!r}; this forgeml reads version {cls.VERSION}")
        corpus = cls(CorpusConfig.model_validate(state["corpus"]), int(state["context"]))
        corpus.tokenizer = Tokenizer.from_str(read(state["tokenizer"]).decode())
        corpus.token_counts = {k: int(v) for k, v in state["tokens"].items()}
        corpus.chat = state.get("chat") if isinstance(state.get("chat"), dict) else None
        return corpus


class WindowBatches:
    """Random windows of ``context + 1`` tokens from a token file: inputs are the first ``context``
    tokens, targets the same shifted by one.

    The same interface as ``InMemoryBatches`` (``len``, ``epoch(start_batch)``, ``generator``), so
    the loop and its exact resume work unchanged: an "epoch" is as many windows as the split has
    tokens, and all of an epoch's window starts are drawn at its beginning, so a resumed run replays
    them from the generator state saved at the epoch's start.

    Args:
        tokens: the token ids (a memmap).
        context: tokens per window.
        batch_size: windows per batch, per rank.
        seed: seeds the window generator.
        device: where batches go.
        rank, world_size: every rank draws the same starts for the global batch of
            ``batch_size * world_size`` windows (same seed) and takes its own slice of them, so the
            ranks together see exactly what one process with the global batch sees.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        context: int,
        batch_size: int,
        seed: int = 0,
        device: torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(tokens) <= context:
            raise DataError(f"{len(tokens)} tokens are too few for one window of {context}")
        self.tokens = tokens
        self.context = context
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        import torch

        self.device = device or torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return max(1, len(self.tokens) // (self.batch_size * self.world_size * self.context))

    def epoch(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        global_batch = self.batch_size * self.world_size
        starts = torch.randint(0, len(self.tokens) - self.context, (len(self), global_batch), generator=self.generator).numpy()
        starts = starts[:, self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        offsets = np.arange(self.context + 1)
        for batch in range(start_batch, len(self)):
            windows = torch.from_numpy(self.tokens[starts[batch][:, None] + offsets].astype(np.int64))
            windows = windows.to(self.device, non_blocking=True)
            yield windows[:, :-1], windows[:, 1:]


def evaluation_windows(tokens: np.ndarray, context: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``limit`` non-overlapping windows spread evenly over a split, for a fixed held-out loss."""
    import torch

    count = (len(tokens) - 1) // context
    if count <= 0:
        empty = torch.zeros(0, context, dtype=torch.int64)
        return empty, empty
    chosen = np.linspace(0, count - 1, num=min(count, limit)).round().astype(np.int64)
    offsets = np.arange(context + 1)
    windows = torch.from_numpy(tokens[chosen[:, None] * context + offsets].astype(np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
