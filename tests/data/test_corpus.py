"""A corpus for language modelling: split in blocks of rows, tokenized into token files, read as windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forgeml.config import CorpusConfig, SplitConfig
from forgeml.data.corpus import BLOCK_ROWS, Corpus, WindowBatches, block_split, evaluation_windows
from forgeml.data.table import Table
from forgeml.errors import DataError

VERSES = [f"Verse {i}: and the {['light', 'earth', 'water', 'heaven'][i % 4]} was good; é {i * 7}." for i in range(400)]


def built(tmp_path: Path, tokenizer: str = "bpe", context: int = 16, **split: float) -> Corpus:
    table = Table.single({"text": np.array(VERSES, dtype=object)}, "verses.txt")
    corpus = Corpus(CorpusConfig(tokenizer=tokenizer, vocab_size=300), context)
    corpus.build(table, SplitConfig(**({"validation": 0.1, "test": 0.1} | split)), seed=0, directory=tmp_path / "tokens")
    return corpus


def test_bpe_round_trips_any_text_and_fills_the_token_files(tmp_path: Path):
    corpus = built(tmp_path)
    text = "Verse 12: and the water was good; é 84.\nUnseen: ünïcödé ✓"
    assert corpus.decode(corpus.encode(text)) == text  # byte-level: nothing is unknown
    assert corpus.vocab_size == 300 and corpus.dtype == np.uint16
    tokens = {name: corpus.tokens(tmp_path / "tokens", name) for name in ("train", "validation", "test")}
    assert {name: len(t) for name, t in tokens.items()} == corpus.token_counts
    assert (tmp_path / "tokens" / "train.bin").stat().st_size == 2 * corpus.token_counts["train"]
    assert isinstance(tokens["train"], np.memmap)
    # the three splits together are the whole text, each row once
    joined = "".join(corpus.decode(list(t)) for t in tokens.values())
    assert sorted(joined.splitlines()) == sorted(VERSES)


def test_rows_are_held_out_in_blocks(tmp_path: Path):
    # 400 rows: blocks of 4 rows (about 100 blocks), 10% of them, i.e. 10 blocks, held out for test
    assert {k: len(v) for k, v in block_split(400, 0.1, 0.1, seed=0).items()} == {"train": 320, "validation": 40, "test": 40}
    assert len(block_split(31102, 0.05, 0.05, seed=0)["test"]) % BLOCK_ROWS in (0, 31102 % BLOCK_ROWS)  # kjv: blocks of 64
    corpus = built(tmp_path)
    held_out = corpus.decode(list(corpus.tokens(tmp_path / "tokens", "test"))).splitlines()
    numbers = [int(line.split(":")[0].split()[1]) for line in held_out]
    assert len(numbers) == 40 and numbers == sorted(numbers)
    runs = [numbers[i : i + 4] for i in range(0, 40, 4)]
    assert all(run[0] % 4 == 0 and run == list(range(run[0], run[0] + 4)) for run in runs)


def test_char_tokenizer_and_state_round_trip(tmp_path: Path):
    corpus = built(tmp_path, tokenizer="char")
    assert corpus.decode(corpus.encode("and the light")) == "and the light"
    assert corpus.vocab_size == len(set("".join(VERSES) + "\n")) + 1  # every character once, and <unk>
    files = corpus.files()
    again = Corpus.from_state(corpus.to_state(), files.__getitem__)
    assert again.encode("the earth") == corpus.encode("the earth") and again.input_spec == corpus.input_spec
    assert corpus.input_spec.kind == "tokens" and corpus.input_spec.shape == (16,)


def test_windows_are_inputs_and_next_tokens_and_replay_from_the_generator(tmp_path: Path):
    corpus = built(tmp_path)
    tokens = corpus.tokens(tmp_path / "tokens", "train")
    batches = WindowBatches(tokens, context=16, batch_size=4, seed=3)
    state = batches.generator.get_state()
    epoch = list(batches.epoch())
    assert len(epoch) == len(batches) == len(tokens) // (4 * 16)
    inputs, targets = epoch[0]
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one
    stream = torch.from_numpy(tokens.astype(np.int64))
    start = int(np.flatnonzero([torch.equal(stream[s : s + 16], inputs[0]) for s in range(len(stream) - 16)])[0])
    assert torch.equal(stream[start + 1 : start + 17], targets[0])
    # resuming mid-epoch: the generator state at the epoch's start replays the same windows
    batches.generator.set_state(state)
    replay = list(batches.epoch(start_batch=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(replay, epoch[2:]))
    different = WindowBatches(tokens, context=16, batch_size=4, seed=4)
    assert not torch.equal(next(different.epoch())[0], inputs)


def test_evaluation_windows_are_fixed_and_do_not_overlap(tmp_path: Path):
    tokens = np.arange(100, dtype=np.uint16)
    inputs, targets = evaluation_windows(tokens, context=10, limit=3)
    assert inputs[:, 0].tolist() == [0, 40, 80] and targets[:, 0].tolist() == [1, 41, 81]
    every, _ = evaluation_windows(tokens, context=10, limit=100)
    assert len(every) == 9  # 99 usable targets: 9 windows of 10
    empty, _ = evaluation_windows(tokens[:5], context=10, limit=3)
    assert empty.shape == (0, 10)


def test_corpus_errors(tmp_path: Path):
    table = Table.single({"verse": np.array(["a b c"] * 3, dtype=object)}, "v.txt")
    with pytest.raises(DataError, match="no column named 'text'"):
        Corpus(CorpusConfig(), 8).build(table, SplitConfig(), 0, tmp_path / "a")
    short = Table.single({"text": np.array(["tiny"], dtype=object)}, "v.txt")
    with pytest.raises(DataError, match="not enough for one window of 64"):
        Corpus(CorpusConfig(tokenizer="char"), 64).build(short, SplitConfig(validation=0.0, test=0.0), 0, tmp_path / "b")
