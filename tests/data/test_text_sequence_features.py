"""Text (a tokenizer trained on the training split) and numeric-sequence (sliding windows) features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from forgeml.config import load_config
from forgeml.data.dataset import load_dataset, split_in_order
from forgeml.data.features import Features
from forgeml.data.sources import read_csv
from forgeml.data.table import Table
from forgeml.errors import DataError
from forgeml.inputs import InputSpec
from forgeml.registry import FEATURES

REVIEWS = [
    "A great movie, great acting!",
    "The plot was dull and the acting bad.",
    "Great fun from start to finish.",
    "Bad, bad, bad.",
    "An unexpectedly moving film.",
    "Dull; I fell asleep.",
    "great great great",
    "the film is bad",
]
LABELS = ["fresh", "rotten", "fresh", "rotten", "fresh", "rotten", "fresh", "rotten"]


def features_of(inputs: list[dict], target: dict) -> Features:
    config = lambda raw: FEATURES.get(raw["type"]).config.model_validate(raw)  # noqa: E731
    return Features([config(raw) for raw in inputs], config(target))


def reviews_table(texts: list[Any] = REVIEWS, labels: list[str] = LABELS) -> Table:
    columns = {"text": np.array(texts, dtype=object), "label": np.array(labels, dtype=object)}
    return Table.single(columns, "reviews.csv", first_line=2)


def fitted_text(**text: Any) -> tuple[Features, Table]:
    features = features_of([{"type": "text", "name": "text", "min_frequency": 1, **text}], {"type": "category", "name": "label"})
    parsed = features.parse(reviews_table())
    features.fit(parsed)
    return features, parsed


# --------------------------------------------------------------------------------------------------
# text


def test_word_tokenizer_ids_padding_and_unknown_words():
    features, parsed = fitted_text(max_length=6)
    ids = features.transform_inputs(parsed)
    assert ids.dtype.is_floating_point is False and ids.shape == (8, 6)
    tokenizer = features.inputs[0].tokenizer
    vocab = tokenizer.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    # "Bad, bad, bad." lowercased: bad , bad , bad .  -> 6 tokens, no padding
    assert ids[3].tolist() == [vocab[t] for t in ["bad", ",", "bad", ",", "bad", "."]]
    # "great great great": 3 tokens then padding with id 0
    assert ids[6].tolist() == [vocab["great"]] * 3 + [0, 0, 0]
    # the first review is truncated to 6 tokens
    assert ids[0].tolist() == [vocab[t] for t in ["a", "great", "movie", ",", "great", "acting"]]
    unseen = features.transform_inputs(features.parse(reviews_table(["GREAT zebra"], ["fresh"]), with_target=False))
    assert unseen[0, :2].tolist() == [vocab["great"], 1]
    assert features.input_spec == InputSpec("tokens", (6,), vocab_size=len(vocab), pad_id=0, unk_id=1)


def test_default_max_length_covers_99_percent_of_training_texts_in_multiples_of_8():
    features, _ = fitted_text()
    lengths = features.inputs[0].lengths(reviews_table().columns["text"])
    assert lengths.tolist() == [7, 9, 7, 6, 5, 6, 3, 4]  # "the plot was dull and the acting bad ." is 9
    assert features.inputs[0].max_length == 16  # the 99th percentile, 8.9, rounded up to a multiple of 8


def test_min_frequency_and_vocab_size_limit_the_vocabulary():
    rare, _ = fitted_text(min_frequency=2)
    vocab = rare.inputs[0].tokenizer.get_vocab()
    assert "great" in vocab and "zebra" not in vocab and "asleep" not in vocab  # "asleep" occurs once
    small, _ = fitted_text(vocab_size=12)
    assert small.inputs[0].vocab_size == 12


def test_bpe_splits_unseen_words_into_known_pieces():
    features, _ = fitted_text(tokenizer="bpe", vocab_size=200)
    tokenizer = features.inputs[0].tokenizer
    tokenizer.no_padding()
    encoded = tokenizer.encode("greatest")  # never seen whole, but its pieces were
    assert 1 not in encoded.ids and len(encoded.ids) >= 2


def test_tokenizer_training_is_deterministic():
    first, _ = fitted_text(tokenizer="bpe", vocab_size=120)
    second, _ = fitted_text(tokenizer="bpe", vocab_size=120)
    assert first.files() == second.files()


def test_text_state_round_trips_through_tokenizer_json():
    features, parsed = fitted_text()
    state, files = features.to_state(), features.files()
    assert list(files) == ["tokenizer.json"] and state["inputs"][0]["state"]["tokenizer"] == "tokenizer.json"
    again = Features.from_state(state, files.__getitem__)
    assert again.transform_inputs(parsed).equal(features.transform_inputs(parsed))
    assert again.input_spec == features.input_spec
    # tokenizer.json is a plain Hugging Face tokenizer, padding and truncation included
    plain = Tokenizer.from_str(files["tokenizer.json"].decode())
    assert plain.encode("great fun").ids == features.transform_inputs(features.parse(reviews_table(["great fun"], ["fresh"])))[0].tolist()
    with pytest.raises(DataError, match="needs its tokenizer.json"):
        Features.from_state(state)


def test_missing_text_is_a_bad_row_both_ways(tmp_path: Path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\n"good film",fresh\n"  ",rotten\n"bad film",rotten\n')
    features = features_of([{"type": "text", "name": "text"}], {"type": "category", "name": "label"})
    with pytest.raises(DataError) as error:
        features.parse(read_csv(path))
    assert str(error.value) == f"{path}, line 3: column 'text': missing text (set data.on_bad_row: skip to drop such rows)"
    parsed = features.parse(read_csv(path), on_bad_row="skip")
    assert len(parsed) == 2 and parsed.skipped == {"text": 1}


def test_text_cannot_be_combined_with_other_inputs():
    with pytest.raises(DataError, match="a text feature cannot be combined with other input features yet"):
        features_of([{"type": "text", "name": "text"}, {"type": "number", "name": "x"}], {"type": "category", "name": "label"})


# --------------------------------------------------------------------------------------------------
# numeric sequence


def series_table(values: list[Any], origin: str = "series.csv") -> Table:
    return Table.single({"v": np.array(values, dtype=object)}, origin, first_line=2)


def forecaster(length: int = 3, normalize: str = "none") -> Features:
    return features_of(
        [{"type": "sequence", "name": "v", "length": length, "normalize": normalize}],
        {"type": "number", "name": "v", "lead": 1, "normalize": normalize},
    )


def test_windows_end_at_the_row_and_the_target_is_the_next_value():
    features = forecaster()
    parsed = features.parse(series_table([1, 2, 3, 4, 5, 6]))
    features.fit(parsed)
    windows, targets = features.transform_inputs(parsed), features.transform_target(parsed)
    assert windows.shape == (3, 3, 1) and features.input_spec == InputSpec("sequence", (3, 1))
    assert windows[:, :, 0].tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    assert targets.tolist() == [4, 5, 6]
    assert parsed.line.tolist() == [4, 5, 6]  # rows 1-2 lack history, row 6 (line 7) has no next value
    # without a target (prediction) the last row is kept: its window forecasts past the end
    inputs = features.transform_inputs(features.parse(series_table([1, 2, 3, 4, 5, 6]), with_target=False))
    assert inputs[-1, :, 0].tolist() == [4, 5, 6]


def test_sequence_normalisation_is_fitted_on_training_windows_and_round_trips():
    features = forecaster(normalize="standard")
    parsed = features.parse(series_table(list(range(10))))
    features.fit(parsed)
    again = Features.from_state(features.to_state())
    assert again.transform_inputs(parsed).equal(features.transform_inputs(parsed))
    assert again.transform_target(parsed).equal(features.transform_target(parsed))
    decoded = features.decode_regression(features.transform_target(parsed).numpy())
    np.testing.assert_allclose(decoded, np.arange(3, 10), rtol=1e-6)


def test_a_missing_value_spoils_every_window_that_contains_it():
    table = series_table([1, 2, "", 4, 5, 6, 7, 8])
    with pytest.raises(DataError) as error:
        forecaster().parse(table)
    assert str(error.value).startswith("series.csv, line 4: column 'v': missing value")
    parsed = forecaster().parse(table, on_bad_row="skip")
    # windows ending at lines 4, 5, 6 contain the gap; line 3's has too little history; line 9 has no target
    assert parsed.line.tolist() == [7, 8]
    message = None
    try:
        forecaster().parse(series_table([1, 2, 3, "x", 5, 6]))
    except DataError as exc:
        message = str(exc)
    assert message is not None and "line 5" in message and "cannot read 'x' as a number" in message


def test_windows_and_leads_never_cross_files():
    first, second = series_table([1, 2, 3, 4], "a.csv"), series_table([10, 20, 30, 40], "b.csv")
    table = Table.concat([first, second])
    features = forecaster(length=2)
    parsed = features.parse(table)
    features.fit(parsed)
    assert features.transform_inputs(parsed)[:, :, 0].tolist() == [[1, 2], [2, 3], [10, 20], [20, 30]]
    assert features.transform_target(parsed).tolist() == [3, 4, 30, 40]


def test_forecasting_config_errors():
    with pytest.raises(DataError, match="also an input feature; to forecast it from its own past, give the target lead: 1"):
        features_of([{"type": "sequence", "name": "v", "length": 3}], {"type": "number", "name": "v"})
    with pytest.raises(DataError, match="`lead` is for the target"):
        features_of([{"type": "number", "name": "v", "lead": 1}], {"type": "number", "name": "y"})
    with pytest.raises(DataError, match="sequence features cannot be combined"):
        features_of([{"type": "sequence", "name": "v", "length": 3}, {"type": "number", "name": "w"}], {"type": "number", "name": "y"})
    with pytest.raises(DataError, match=r"one window length; got \[2, 3\]"):
        features_of([{"type": "sequence", "name": "v", "length": 3}, {"type": "sequence", "name": "w", "length": 2}], {"type": "number", "name": "y"})


def test_two_series_become_the_features_of_each_time_step():
    table = Table.single({"v": np.arange(5.0), "w": np.arange(5.0) * 10, "y": np.arange(5.0)}, "s.csv")
    features = features_of(
        [{"type": "sequence", "name": "v", "length": 2, "normalize": "none"}, {"type": "sequence", "name": "w", "length": 2, "normalize": "none"}],
        {"type": "number", "name": "y"},
    )
    parsed = features.parse(table)
    features.fit(parsed)
    windows = features.transform_inputs(parsed)
    assert windows.shape == (4, 2, 2) and windows[0].tolist() == [[0, 0], [1, 10]]


def test_sequential_split_keeps_time_order(tmp_path: Path):
    assert {k: v.tolist() for k, v in split_in_order(10, 0.2, 0.1).items()} == {
        "train": [0, 1, 2, 3, 4, 5, 6], "validation": [7, 8], "test": [9]
    }
    path = tmp_path / "series.csv"
    path.write_text("v\n" + "\n".join(str(i * i) for i in range(30)) + "\n")
    config = {
        "data": {
            "source": {"type": "csv", "path": str(path)},
            "features": [{"type": "sequence", "name": "v", "length": 4}],
            "target": {"type": "number", "name": "v", "lead": 1},
            "split": {"order": "sequential", "validation": 0.2, "test": 0.2},
        },
        "model": {"type": "mlp"},
    }
    dataset = load_dataset(load_config(config).data, seed=0)
    lines = {name: dataset.split(name).line.tolist() for name in ("train", "validation", "test")}
    # 30 values on lines 2..31: windows end at lines 5..30 (26 rows), split 16 / 5 / 5 in order
    assert lines["train"] == list(range(5, 21)) and lines["validation"] == list(range(21, 26)) and lines["test"] == list(range(26, 31))
