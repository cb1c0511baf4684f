"""The config layer: validation messages, --set overrides, YAML files, the resolved dump, the JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, tiny_config

from forgeml.config import apply_overrides, dump_config, json_schema, load_config, read_yaml
from forgeml.errors import ConfigError, ForgeError


def config_error(raw: dict[str, Any], overrides: list[str] | None = None) -> str:
    """The message of the ConfigError that validating ``raw`` (with ``overrides``) raises."""
    with pytest.raises(ConfigError) as info:
        load_config(raw, overrides)
    return str(info.value)


def with_section(section: str, **changes: Any) -> dict[str, Any]:
    """``tiny_config()`` with keys of one top-level section replaced."""
    config = tiny_config()
    config[section] = {**config[section], **changes}
    return config


# --------------------------------------------------------------------------------------------------
# error messages name the YAML path and list what is allowed


def test_unknown_model_type_lists_the_registered_types():
    assert config_error(with_section("model", type="cnnn")) == "config: model.type: 'cnnn' is not one of: cnn, linear, mlp, rnn, attention, textcnn, transformer, gpt, hf"


def test_missing_model_type_lists_the_registered_types():
    config = tiny_config()
    del config["model"]["type"]
    assert config_error(config) == "config: model: needs a `type`, one of: cnn, linear, mlp, rnn, attention, textcnn, transformer, gpt, hf"


def test_unknown_key_lists_the_allowed_keys():
    from forgeml.config import TrainConfig

    message = config_error(with_section("train", lrr=0.1))
    assert message.startswith("config: train.lrr: unknown key; allowed keys here: epochs, max_steps, batch_size, ")
    assert message.split("allowed keys here: ")[1].split(", ") == list(TrainConfig.model_fields)


def test_unknown_top_level_key():
    config = tiny_config()
    config["trian"] = {}
    assert config_error(config) == "config: trian: unknown key; allowed keys here: name, seed, train, output, pipeline, data, model"


def test_unknown_key_inside_a_list_item_names_the_index():
    config = tiny_config()
    config["model"]["blocks"][0]["chanels"] = 3
    assert config_error(config) == (
        "config: model.blocks[0].chanels: unknown key; allowed keys here: "
        "channels, kernel, stride, padding, pool, pool_size, batch_norm, dropout, activation"
    )


def test_bad_literal_lists_the_choices():
    assert config_error(with_section("train", optimizer="sgdd")) == "config: train.optimizer: 'sgdd' is not one of: sgd, adam, adamw"
    config = tiny_config()
    config["model"]["blocks"][1]["pool"] = "min"
    assert config_error(config) == "config: model.blocks[1].pool: 'min' is not one of: max, avg, none"


def test_bad_feature_type_in_a_list():
    config = tiny_config()
    config["data"]["features"] = [{"type": "numbr", "name": "x"}]
    assert config_error(config) == "config: data.features[0].type: 'numbr' is not one of: number, category, image, text, sequence"
    config["data"]["features"] = [{"name": "x"}]
    assert config_error(config) == "config: data.features[0]: needs a `type`, one of: number, category, image, text, sequence"


def test_int_or_literal_union_names_both_options():
    assert config_error(with_section("train", batch_size="half")) == "config: train.batch_size: 'half' is not valid; expected int or 'full'"


def test_value_error_and_range_messages():
    assert config_error(with_section("train", device="gpu")) == "config: train.device: 'gpu' is not one of: auto, cpu, cuda, cuda:N, mps"
    assert config_error(with_section("train", lr=-1)) == "config: train.lr: Input should be greater than 0 (got -1)"
    assert config_error(with_section("train", grad_accum=0)) == "config: train.grad_accum: Input should be greater than or equal to 1 (got 0)"


def test_a_learning_rate_that_can_only_diverge_is_refused():
    usable = "is not a usable learning rate; give a finite number above 0 and at most 10 (e.g. 0.001)"
    assert config_error(tiny_config(), ["train.lr=.inf"]) == f"config: train.lr: inf {usable}"
    assert config_error(tiny_config(), ["train.lr=1e30"]) == f"config: train.lr: 1e+30 {usable}"  # a string to YAML, a number to pydantic
    assert config_error(with_section("train", lr=10.5)) == f"config: train.lr: 10.5 {usable}"
    assert config_error(with_section("train", lr=float("nan"))) == f"config: train.lr: nan {usable}"
    assert config_error(with_section("train", lr=0)) == "config: train.lr: Input should be greater than 0 (got 0)"
    assert load_config(tiny_config(), ["train.lr=10"]).train.lr == 10.0
    assert config_error(tiny_config(), ["train.nonfinite=skip"]) == "config: train.nonfinite: 'skip' is not one of: stop, skip_step"


def test_missing_required_section():
    config = tiny_config()
    config["data"] = {}
    assert config_error(config) == "config: data.source: required, but missing"


def test_several_errors_are_reported_one_per_line():
    config = tiny_config()
    config["train"] = {**config["train"], "optimizer": "sgdd", "lrr": 1}
    lines = config_error(config).splitlines()
    assert len(lines) == 2
    assert "config: train.optimizer: 'sgdd' is not one of: sgd, adam, adamw" in lines
    assert [line for line in lines if "lrr" in line][0].startswith("config: train.lrr: unknown key; allowed keys here: epochs,")


def test_csv_source_needs_exactly_one_of_path_and_paths():
    config = tiny_config()
    config["data"] = {"source": {"type": "csv"}}
    assert config_error(config) == "config: data.source: give exactly one of `path` (one file) or `paths` (a file per split)"
    config["data"] = {"source": {"type": "csv", "path": "a.csv", "paths": {"train": "b.csv"}}}
    assert "give exactly one of `path`" in config_error(config)
    config["data"] = {"source": {"type": "csv", "paths": {"test": "b.csv"}}}
    assert config_error(config) == "config: data.source: `paths` needs a `train` file"


def test_a_bad_split_file_key_lists_the_split_names():
    config = tiny_config(data={"source": {"type": "csv", "paths": {"train": "a.csv", "dev": "b.csv"}}})
    message = config_error(config)
    assert "'dev' is not one of: train, validation, test" in message and "[key]" not in message


def test_a_config_error_is_a_forge_error_with_exit_code_2():
    with pytest.raises(ForgeError) as info:
        load_config(with_section("model", type="cnnn"))
    assert info.value.exit_code == 2


def test_errors_from_a_file_name_the_file(tmp_path: Path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(with_section("train", optimizer="sgdd")))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: train.optimizer: 'sgdd' is not one of: sgd, adam, adamw"


# --------------------------------------------------------------------------------------------------
# built-in shorthand and defaults


def test_builtin_source_shorthand_is_expanded():
    config = tiny_config()
    config["data"]["source"] = "digits"
    cfg = load_config(config)
    assert cfg.data.source.type == "builtin" and cfg.data.source.name == "digits"
    assert cfg == load_config(tiny_config())  # the shorthand means exactly the long form


def test_builtin_source_fills_in_its_features_and_target():
    cfg = load_config(tiny_config())
    assert [(f.type, f.name) for f in cfg.data.features] == [("image", "image")]
    assert (cfg.data.target.type, cfg.data.target.name) == ("category", "label")


def test_unknown_builtin_name_in_shorthand_lists_the_names():
    config = tiny_config()
    config["data"]["source"] = "digitz"
    assert config_error(config) == "config: data.source.name: 'digitz' is not one of: digits, mnist5k, breast_cancer, rotten_tomatoes, kjv, sunspots"


def test_defaults_are_filled_in():
    cfg = load_config(tiny_config())
    assert cfg.train.optimizer == "adam" and cfg.train.betas == (0.9, 0.999) and cfg.train.keep_checkpoints == 2
    assert cfg.model.blocks[0].kernel == 3 and cfg.model.blocks[0].padding == "same"
    assert cfg.data.split.stratify is True and cfg.data.on_bad_row == "error"


def test_load_config_does_not_change_the_callers_dict():
    config = tiny_config()
    before = json.dumps(config, sort_keys=True)
    load_config(config, ["train.lr=0.5", "model.blocks.0.channels=2"])
    assert json.dumps(config, sort_keys=True) == before


# --------------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_parse_values_as_yaml_and_reach_into_lists():
    cfg = load_config(
        tiny_config(),
        ["train.lr=0.5", "model.blocks.1.channels=5", "train.betas=[0.8, 0.9]", "train.grad_clip=null", "data.source=mnist5k", "name=other"],
    )
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)
    assert [b.channels for b in cfg.model.blocks] == [4, 5]
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.train.grad_clip is None
    assert cfg.data.source.name == "mnist5k"
    assert cfg.name == "other"


def test_apply_overrides_creates_missing_sections_and_edits_in_place():
    raw: dict[str, Any] = {"train": {"lr": 1}}
    out = apply_overrides(raw, ["train.early_stopping.patience=3", "model.type=mlp", "seed=7"])
    assert out is raw
    assert raw == {"train": {"lr": 1, "early_stopping": {"patience": 3}}, "model": {"type": "mlp"}, "seed": 7}


def test_apply_overrides_keeps_a_value_that_is_not_yaml_as_text():
    raw: dict[str, Any] = {}
    apply_overrides(raw, ["name=a: b: c", "output.dir=runs/x"])
    assert raw == {"name": "a: b: c", "output": {"dir": "runs/x"}}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr", "--set 'train.lr': expected KEY=VALUE, e.g. --set train.lr=0.01"),
        ("=3", "--set '=3': expected KEY=VALUE, e.g. --set train.lr=0.01"),
        ("model.blocks.5.channels=3", "--set model.blocks.5.channels: model.blocks has no item 5"),
        ("model.blocks.first.channels=3", "--set model.blocks.first.channels: model.blocks has no item first"),
        ("train.lr.x=3", "--set train.lr.x: train.lr is a value, not a section"),
    ],
)
def test_bad_overrides(override: str, message: str):
    assert config_error(tiny_config(), [override]) == message


def test_override_with_a_bad_value_is_reported_at_its_path():
    assert config_error(tiny_config(), ["train.schedule=linear"]) == "config: train.schedule: 'linear' is not one of: constant, step, cosine"


# --------------------------------------------------------------------------------------------------
# YAML files


def test_read_yaml_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        read_yaml(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such config file"


def test_read_yaml_bad_yaml_names_the_file_on_one_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML: ") and "\n" not in message
    assert "line" in message  # the parser's position survives


def test_read_yaml_top_level_must_be_a_mapping(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"the top level must be a mapping"):
        read_yaml(path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}


def test_load_config_from_a_file_takes_the_name_from_the_file(tmp_path: Path):
    config = tiny_config()
    del config["name"]
    path = tmp_path / "my_experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).name == "my_experiment"
    assert load_config(path, ["name=explicit"]).name == "explicit"


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(),
        tiny_config(
            data={
                "source": {"type": "csv", "paths": {"train": "a.csv", "test": "b.csv"}, "delimiter": ";"},
                "features": [{"type": "image", "name": "p", "size": [12, 10], "channels": 3}],
                "target": {"type": "number", "name": "y", "normalize": "minmax"},
            },
            model={"type": "mlp", "hidden": [8, 4], "batch_norm": True},
            train={"batch_size": "full", "early_stopping": {"patience": 2}, "betas": [0.5, 0.6], "device": "cuda:1"},
        ),
        tiny_config(data={"source": {"type": "inline", "columns": {"x": [1, 2.5], "y": ["a", "b"]}}, "features": [{"type": "number", "name": "x"}], "target": {"type": "category", "name": "y"}}),
    ],
    ids=["builtin-cnn", "csv-mlp", "inline"],
)
def test_dump_config_round_trips_to_an_equal_config(tmp_path: Path, config: dict[str, Any]):
    cfg = load_config(config)
    text = dump_config(cfg)
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == text  # a fixed point
    assert load_config(cfg) == cfg  # a validated config is accepted as a source too


def test_dump_config_is_in_reading_order():
    data = yaml.safe_load(dump_config(load_config(tiny_config())))
    assert list(data) == ["name", "seed", "data", "model", "train", "output", "pipeline"]
    assert list(data["data"]) == ["source", "corpus", "features", "target", "augment", "split", "on_bad_row"]


def test_every_example_config_validates():
    examples = sorted((REPO / "examples").rglob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        cfg = load_config(path)
        assert cfg.name == yaml.safe_load(path.read_text()).get("name", path.stem)


# --------------------------------------------------------------------------------------------------
# JSON Schema

JSON_TYPES = {"string", "number", "integer", "boolean", "null", "array", "object"}


def resolve(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    """The node a local ``#/$defs/...`` reference points to."""
    assert ref.startswith("#/"), ref
    node: Any = schema
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def check_schema_node(node: Any, schema: dict[str, Any], path: str) -> None:
    """Structural checks of a JSON Schema node: known types, resolvable refs, required keys declared."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            check_schema_node(item, schema, f"{path}[{i}]")
        return
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        resolve(schema, node["$ref"])
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        assert set(types) <= JSON_TYPES, f"{path}: unknown type {node['type']}"
    if "required" in node:
        assert set(node["required"]) <= set(node.get("properties", {})), f"{path}: required keys not declared"
    if "discriminator" in node:
        for ref in node["discriminator"]["mapping"].values():
            resolve(schema, ref)
    for key in ("oneOf", "anyOf", "allOf", "prefixItems"):
        if key in node:
            assert isinstance(node[key], list) and node[key], f"{path}.{key} must be a non-empty list"
    for key, value in node.items():
        if key in ("properties", "$defs", "patternProperties"):  # maps of names to schemas
            for name, sub in value.items():
                check_schema_node(sub, schema, f"{path}/{key}/{name}")
        elif key not in ("const", "enum", "default", "examples", "discriminator"):
            check_schema_node(value, schema, f"{path}/{key}")


def schema_errors(instance: Any, node: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """A small JSON Schema validator (the keywords pydantic emits); returns what does not match."""
    if "$ref" in node:
        return schema_errors(instance, resolve(schema, node["$ref"]), schema, path)
    errors: list[str] = []
    if "anyOf" in node or "oneOf" in node:
        options = node.get("anyOf") or node["oneOf"]
        matching = [o for o in options if not schema_errors(instance, o, schema, path)]
        if not matching or ("oneOf" in node and len(matching) != 1):
            errors.append(f"{path}: {instance!r} matches {len(matching)} of the options")
    if "const" in node and instance != node["const"]:
        errors.append(f"{path}: {instance!r} != {node['const']!r}")
    if "enum" in node and instance not in node["enum"]:
        errors.append(f"{path}: {instance!r} not in {node['enum']}")
    if "type" in node:
        checks = {
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
            "array": lambda v: isinstance(v, list),
            "object": lambda v: isinstance(v, dict),
        }
        if not checks[node["type"]](instance):
            return errors + [f"{path}: {instance!r} is not of type {node['type']}"]
    if isinstance(instance, (int, float)) and not isinstance(instance, bool):
        for key, ok in (
            ("minimum", lambda v, b: v >= b),
            ("maximum", lambda v, b: v <= b),
            ("exclusiveMinimum", lambda v, b: v > b),
            ("exclusiveMaximum", lambda v, b: v < b),
        ):
            if key in node and not ok(instance, node[key]):
                errors.append(f"{path}: {instance!r} violates {key} {node[key]}")
    if isinstance(instance, dict):
        properties = node.get("properties", {})
        for key in node.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing {key}")
        for key, value in instance.items():
            if key in properties:
                errors += schema_errors(value, properties[key], schema, f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected key {key}")
            elif isinstance(node.get("additionalProperties"), dict):
                errors += schema_errors(value, node["additionalProperties"], schema, f"{path}.{key}")
            if "propertyNames" in node:
                errors += schema_errors(key, node["propertyNames"], schema, f"{path}.{key}(name)")
    if isinstance(instance, list):
        prefix = node.get("prefixItems", [])
        for i, item in enumerate(instance):
            if i < len(prefix):
                errors += schema_errors(item, prefix[i], schema, f"{path}[{i}]")
            elif "items" in node:
                errors += schema_errors(item, node["items"], schema, f"{path}[{i}]")
        if "minItems" in node and len(instance) < node["minItems"]:
            errors.append(f"{path}: fewer than {node['minItems']} items")
        if "maxItems" in node and len(instance) > node["maxItems"]:
            errors.append(f"{path}: more than {node['maxItems']} items")
    return errors


def schema_fields(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(holder, field name, field schema) for every property of the root and of every definition."""
    holders = [("(root)", schema)] + list(schema["$defs"].items())
    return [(holder, name, prop) for holder, node in holders for name, prop in node.get("properties", {}).items()]


def test_json_schema_is_a_json_schema_document():
    schema = json_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "forgeml experiment config" and schema["type"] == "object"
    assert set(schema["required"]) == {"data", "model"}
    check_schema_node(schema, schema, "#")
    model = schema["properties"]["model"]
    assert model["discriminator"]["propertyName"] == "type"
    assert sorted(model["discriminator"]["mapping"]) == ["attention", "cnn", "gpt", "hf", "linear", "mlp", "rnn", "textcnn", "transformer"]
    assert schema["$defs"]["TrainConfig"]["additionalProperties"] is False  # editors flag typos too


def test_json_schema_checks_catch_a_broken_schema():
    """The helpers above fail on what they claim to check (so the schema tests can fail)."""
    schema = {"$defs": {}, "properties": {"a": {"$ref": "#/$defs/Missing"}}}
    with pytest.raises(KeyError):
        check_schema_node(schema, schema, "#")
    bad_type = {"properties": {"a": {"type": "str"}}}
    with pytest.raises(AssertionError):
        check_schema_node(bad_type, bad_type, "#")
    node = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}, "additionalProperties": False, "required": ["a"]}
    assert schema_errors({"a": 1}, node, node) == []
    assert len(schema_errors({"a": 0, "b": 1}, node, node)) == 2


def test_resolved_configs_validate_against_the_json_schema():
    schema = json_schema()
    for config in (tiny_config(), tiny_config(model={"type": "linear", "init": "zeros"}, train={"batch_size": "full"})):
        assert schema_errors(json.loads(json.dumps(load_config(config).model_dump(mode="json"))), schema, schema) == []
    broken = load_config(tiny_config()).model_dump(mode="json")
    broken["train"]["optimizer"] = "sgdd"
    assert schema_errors(broken, schema, schema) == [".train.optimizer: 'sgdd' not in ['sgd', 'adam', 'adamw']"]


def test_every_field_except_type_has_a_description():
    fields = schema_fields(json_schema())
    assert len(fields) > 60
    missing = [f"{holder}.{name}" for holder, name, prop in fields if name != "type" and not str(prop.get("description", "")).strip()]
    assert missing == []


def test_every_field_has_a_description():
    missing = [f"{holder}.{name}" for holder, name, prop in schema_fields(json_schema()) if not str(prop.get("description", "")).strip()]
    assert missing == []


def test_descriptions_are_one_line():
    for holder, name, prop in schema_fields(json_schema()):
        if "description" in prop:
            assert "\n" not in prop["description"], f"{holder}.{name}"


def test_every_example_config_matches_the_json_schema():
    schema = json_schema()
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert schema_errors(raw, schema, schema) == [], path.name


def test_schema_descriptions_feed_the_field_help():
    train = json_schema()["$defs"]["TrainConfig"]["properties"]
    assert re.search(r"learning rate", train["lr"]["description"], re.IGNORECASE)
    assert train["batch_size"]["default"] == 64
