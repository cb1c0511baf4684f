"""raw.decode, the one place model outputs become predictions (Predictor, forgeml.runtime, serve):
outputs that are nan or inf are refused, so no prediction ever holds a number JSON cannot write."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forgeml.data import raw
from forgeml.data.features import Features
from forgeml.data.table import Table
from forgeml.errors import PredictionError
from forgeml.registry import FEATURES


def fitted(target: dict, values: list) -> Features:
    """Features of one number input and ``target``, fitted on a few rows."""
    config = lambda item: FEATURES.get(item["type"]).config.model_validate(item)  # noqa: E731
    features = Features([config({"type": "number", "name": "x"})], config(target))
    features.fit(Table.single({"x": np.arange(len(values), dtype=object), "y": np.array(values, dtype=object)}, "rows.csv"))
    return features


def test_decode_refuses_outputs_that_are_not_finite():
    classifier = fitted({"type": "category", "name": "y"}, ["a", "b", "c", "a"])
    outputs = np.zeros((4, 3), dtype=np.float32)
    outputs[2, 1], outputs[3, 0] = np.nan, np.inf
    with pytest.raises(PredictionError) as error:
        raw.decode(classifier, outputs)
    assert str(error.value) == (
        "the model outputs nan or inf for 2 of 4 inputs (the first: input 3), which are no predictions: "
        "its weights are unusable (train it again, e.g. with a lower train.lr) or those inputs lie far outside the training data"
    )
    finite = raw.decode(classifier, outputs[:2])
    assert json.loads(json.dumps(finite, allow_nan=False)) == [{"label": "a", "probabilities": {"a": 0.333333, "b": 0.333333, "c": 0.333333}}] * 2

    regressor = fitted({"type": "number", "name": "y"}, [1.0, 2.0, 3.0])
    with pytest.raises(PredictionError, match="for 1 of 2 inputs \\(the first: input 2\\)"):
        raw.decode(regressor, np.array([[0.0], [np.nan]], dtype=np.float32))
    assert raw.decode(regressor, np.array([[0.0]], dtype=np.float32)) == [{"value": 2.0}]  # the mean, in the target's units
    assert raw.decode(regressor, np.zeros((0, 1), dtype=np.float32)) == []
