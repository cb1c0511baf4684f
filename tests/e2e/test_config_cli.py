"""`forgeml config validate | show | schema`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import EXAMPLES, REPO, assert_user_error, describe, forge, in_parallel, tiny_config, write_yaml

EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))
EXAMPLE_PARAMS = [pytest.param(p, id=str(p.relative_to(EXAMPLES))) for p in EXAMPLE_FILES]


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("config_cli")
    tiny = write_yaml(root / "tiny.yaml", tiny_config())
    example = EXAMPLES / "digits_mlp.yaml"

    def show_twice() -> tuple[Any, Any]:
        first = forge("config", "show", example)
        if first.returncode != 0:
            return first, None
        (root / "shown.yaml").write_text(first.stdout)
        return first, forge("config", "show", root / "shown.yaml")

    results = in_parallel(
        {
            "valid": lambda: forge("config", "validate", tiny),
            "invalid": lambda: forge("config", "validate", tiny, "--set", "model.type=cnnn"),
            "two_errors": lambda: forge("config", "validate", tiny, "--set", "model.type=cnnn", "--set", "train.lr=-1"),
            "show": show_twice,
            "schema": lambda: forge("config", "schema"),
        }
    )
    return {"tiny": tiny, **results}


@pytest.fixture(scope="module")
def schema(calls: dict[str, Any]) -> dict[str, Any]:
    result = calls["schema"]
    assert result.returncode == 0, describe(result)
    return json.loads(result.stdout)


def test_validate_ok(calls: dict[str, Any]) -> None:
    result = calls["valid"]
    assert result.returncode == 0, describe(result)
    assert result.stdout.strip() == f"{calls['tiny']}: ok (cnn on builtin)"
    assert result.stderr == ""


def test_validate_names_the_yaml_path_of_an_error(calls: dict[str, Any]) -> None:
    line = assert_user_error(calls["invalid"])
    assert line == f"error: {calls['tiny']}: model.type: 'cnnn' is not one of: cnn, linear, mlp, rnn, attention, textcnn, transformer, gpt, hf"
    assert calls["invalid"].stdout == ""


def test_a_config_with_two_errors_still_prints_one_error_line(calls: dict[str, Any]) -> None:
    line = assert_user_error(calls["two_errors"])
    assert "model.type" in line and "train.lr" in line


def test_show_prints_the_config_with_defaults_filled_in(calls: dict[str, Any]) -> None:
    result, again = calls["show"]
    assert result.returncode == 0, describe(result)
    shown = yaml.safe_load(result.stdout)
    assert list(shown) == ["name", "seed", "data", "model", "train", "output", "pipeline"]
    assert shown["name"] == "digits_mlp"
    # the shorthand `source: digits` is expanded, and the built-in dataset's columns are filled in
    assert shown["data"]["source"] == {"type": "builtin", "name": "digits"}
    assert [f["type"] for f in shown["data"]["features"]] == ["image"]
    assert shown["data"]["target"]["type"] == "category"
    assert shown["data"]["split"]["stratify"] is True
    assert shown["data"]["on_bad_row"] == "error"
    # values from the file are kept ...
    assert shown["model"]["hidden"] == [128, 64]
    assert shown["train"]["lr"] == 0.002
    assert shown["train"]["early_stopping"]["patience"] == 8
    # ... and every default is written out
    assert shown["train"]["early_stopping"]["min_delta"] == 0.0
    assert shown["train"]["grad_accum"] == 1
    assert shown["train"]["max_steps"] is None
    assert shown["train"]["precision"] == "fp32"
    assert shown["output"] == {"dir": "runs"}
    # the resolved config is itself a valid config that resolves to itself
    assert again is not None and again.returncode == 0, describe(again)
    assert again.stdout == result.stdout


def test_schema_is_a_json_schema_of_the_config(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert {"name", "seed", "data", "model", "train", "output"} <= set(schema["properties"])
    assert {"data", "model"} <= set(schema["required"])
    defs = schema["$defs"]
    assert {"lr", "epochs", "max_steps", "batch_size", "optimizer"} <= set(defs["TrainConfig"]["properties"])
    assert defs["TrainConfig"]["properties"]["optimizer"]["enum"] == ["sgd", "adam", "adamw"]
    model_types = set(schema["properties"]["model"]["discriminator"]["mapping"])
    assert model_types == {"cnn", "linear", "mlp", "rnn", "attention", "textcnn", "transformer", "gpt", "hf"}


@pytest.mark.parametrize("example", EXAMPLE_PARAMS)
def test_schema_knows_every_key_of_the_examples(schema: dict[str, Any], example: Path) -> None:
    """A check that needs no jsonschema package: every key the examples use is declared in the schema."""
    raw = yaml.safe_load(example.read_text())
    defs = schema["$defs"]
    assert set(raw) <= set(schema["properties"])
    assert set(raw["data"]) <= set(defs["DataConfig"]["properties"])
    assert set(raw.get("train", {})) <= set(defs["TrainConfig"]["properties"])
    model_ref = schema["properties"]["model"]["discriminator"]["mapping"][raw["model"]["type"]]
    assert set(raw["model"]) <= set(defs[model_ref.rsplit("/", 1)[1]]["properties"])


def test_schema_accepts_the_builtin_source_shorthand(schema: dict[str, Any]) -> None:
    """`source: digits` (examples/digits_mlp.yaml) is valid config, so the schema must allow a string there."""
    source = schema["$defs"]["DataConfig"]["properties"]["source"]
    branches = source.get("anyOf", []) + source.get("oneOf", []) + [source]
    strings = [b for b in branches if b.get("type") == "string"]
    assert strings and all({"digits", "mnist5k"} <= set(b.get("enum", ["digits", "mnist5k"])) for b in strings), json.dumps(source)[:500]


@pytest.mark.parametrize("example", EXAMPLE_PARAMS)
def test_schema_validates_every_example(schema: dict[str, Any], example: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator_class(schema).iter_errors(yaml.safe_load(example.read_text()))]
    assert not errors, f"{example.relative_to(REPO)}: {errors}"
