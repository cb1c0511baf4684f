"""Text feature with `tokenizer: pretrained`: the model's own tokenizer (offline all-MiniLM-L6-v2), saved whole with the run."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from forgeml.data.features import Features
from forgeml.data.table import Table
from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.pretrained import resolve
from forgeml.registry import FEATURES

SENTENCES = [
    "A great movie, great acting!",
    "The plot was dull and the acting bad.",
    "Unexpectedly MOVING film.",
    "Bad.",
]
LABELS = ["fresh", "rotten", "fresh", "rotten"]


def fitted(**text: Any) -> tuple[Features, Table]:
    config = lambda raw: FEATURES.get(raw["type"]).config.model_validate(raw)  # noqa: E731
    features = Features([config({"type": "text", "name": "text", "tokenizer": "pretrained", **text})], config({"type": "category", "name": "label"}))
    columns = {"text": np.array(SENTENCES, dtype=object), "label": np.array(LABELS, dtype=object)}
    parsed = features.parse(Table.single(columns, "reviews.csv", first_line=2))
    features.fit(parsed)
    return features, parsed


@pytest.fixture(scope="module")
def reference_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve(None).local_dir))


def test_ids_equal_the_models_own_tokenizer_with_cls_sep_and_padding(reference_tokenizer):
    features, parsed = fitted()
    ids = features.transform_inputs(parsed)
    # the longest sentence is 9 word pieces + [CLS] and [SEP] = 11: the multiple of 8 above it is 16
    assert ids.shape == (4, 16)
    expected = reference_tokenizer(SENTENCES, padding="max_length", max_length=16)["input_ids"]
    assert ids.tolist() == expected
    assert ids[3].tolist()[:4] == [101, reference_tokenizer.convert_tokens_to_ids("bad"), 1012, 102]  # [CLS] bad . [SEP]
    # [UNK] 100; [CLS] 101, [SEP] 102 and [MASK] 103 are special: augmentation leaves them where they are
    assert features.input_spec == InputSpec("tokens", (16,), vocab_size=30522, pad_id=0, unk_id=100, special_ids=(101, 102, 103))


def test_truncation_keeps_the_final_sep(reference_tokenizer):
    features, parsed = fitted(max_length=5)
    ids = features.transform_inputs(parsed)
    assert ids.shape == (4, 5)
    assert ids[:, -1].tolist() == [102, 102, 102, 0]  # "Bad." is [CLS] bad . [SEP] [PAD]
    assert ids.tolist() == reference_tokenizer(SENTENCES, truncation=True, padding="max_length", max_length=5)["input_ids"]


def test_round_trips_through_tokenizer_json_without_transformers(monkeypatch):
    features, parsed = fitted()
    state, files = features.to_state(), features.files()
    monkeypatch.setitem(sys.modules, "transformers", None)  # any import of transformers now fails
    again = Features.from_state(state, files.__getitem__)
    assert again.transform_inputs(parsed).tolist() == features.transform_inputs(parsed).tolist()
    assert again.input_spec == features.input_spec


def test_lengths_before_truncation_and_padding_restored():
    features, _ = fitted(max_length=5)
    text = features.inputs[0]
    assert text.lengths(np.array(SENTENCES, dtype=object)).tolist() == [9, 11, 6, 4]  # with [CLS] and [SEP]
    assert text.tokenizer.padding["pad_id"] == 0 and text.tokenizer.padding["length"] == 5


def test_max_length_beyond_the_model_is_an_error():
    with pytest.raises(ConfigError, match="longer than the pretrained model takes .512."):
        fitted(max_length=600)
