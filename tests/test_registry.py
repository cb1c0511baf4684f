"""Registries: a ``type`` name maps to a component and its config class."""

from __future__ import annotations

import sys
from typing import Literal

import pytest
from pydantic import BaseModel

from forgeml.errors import ConfigError
from forgeml.registry import FEATURES, MODELS, SOURCES, Registry


class WidgetConfig(BaseModel):
    type: Literal["widget"]
    size: int = 1


class GadgetConfig(BaseModel):
    type: Literal["gadget"]


def test_register_get_and_build_with_runtime_objects():
    registry: Registry = Registry("toy")

    @registry.register("widget", WidgetConfig)
    def build_widget(cfg: WidgetConfig, *, scale: int) -> tuple[int, int]:
        return cfg.size, scale

    assert registry.names() == ["widget"]
    assert registry.configs() == [WidgetConfig]
    entry = registry.get("widget")
    assert (entry.name, entry.component, entry.config) == ("widget", build_widget, WidgetConfig)
    assert registry.build(WidgetConfig(type="widget", size=3), scale=10) == (3, 10)


def test_duplicate_registration_is_rejected():
    registry: Registry = Registry("toy")
    registry.register("widget", WidgetConfig)(lambda cfg: None)
    with pytest.raises(TypeError, match=r"toy type 'widget' is registered twice"):
        registry.register("widget", WidgetConfig)(lambda cfg: None)


def test_config_without_a_literal_type_field_is_rejected():
    class NoType(BaseModel):
        size: int = 1

    class StringType(BaseModel):
        type: str = "widget"

    registry: Registry = Registry("toy")
    for config in (NoType, StringType):
        with pytest.raises(TypeError, match=r"needs a field `type: Literal\['widget'\]`"):
            registry.register("widget", config)
    with pytest.raises(TypeError, match=r"GadgetConfig needs a field `type: Literal\['widget'\]`"):
        registry.register("widget", GadgetConfig)  # a Literal, but of another name
    assert registry.names() == []


def test_unknown_name_is_a_config_error_listing_the_names():
    registry: Registry = Registry("toy")
    registry.register("widget", WidgetConfig)(lambda cfg: None)
    registry.register("gadget", GadgetConfig)(lambda cfg: None)
    with pytest.raises(ConfigError) as info:
        registry.get("gizmo")
    assert str(info.value) == "toy type 'gizmo' is not one of: widget, gadget"


def test_discovery_imports_the_named_modules_on_first_use(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    registry: Registry = Registry("toy", discover=("colorsys",))
    assert "colorsys" not in sys.modules  # nothing imported at construction
    assert registry.names() == []
    assert "colorsys" in sys.modules


def test_builtin_registries_hold_the_documented_types():
    assert {"cnn", "linear", "mlp"} <= set(MODELS.names())
    assert {"builtin", "csv", "inline"} <= set(SOURCES.names())
    assert {"number", "category", "image"} <= set(FEATURES.names())
    with pytest.raises(ConfigError) as info:
        MODELS.get("nonesuch")
    assert str(info.value) == f"model type 'nonesuch' is not one of: {', '.join(MODELS.names())}"
