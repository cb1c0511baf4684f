"""Registries of components, keyed by the ``type`` name users write in YAML.

A component registers itself together with its config class::

    @MODELS.register("cnn", CNNConfig)
    def build_cnn(cfg: CNNConfig, *, inputs: InputSpec, num_outputs: int): ...

The config layer asks a registry for its config classes to build the schema. Registries discover
their members by importing the packages named at construction time, on first use, so that this
module (and ``forgeml.config``) stay free of torch at import time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel

from forgeml.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    component: T
    config: type[BaseModel]


class Registry(Generic[T]):
    """Maps a ``type`` name to a component and its pydantic config class."""

    def __init__(self, kind: str, discover: tuple[str, ...] = ()):
        self.kind = kind
        self._discover = discover
        self._discovered = False
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: type[BaseModel]) -> Callable[[T], T]:
        """Decorator: register ``component`` under ``name`` with its ``config`` class."""
        type_field = config.model_fields.get("type")
        if type_field is None or getattr(type_field.annotation, "__args__", None) != (name,):
            raise TypeError(f"{config.__name__} needs a field `type: Literal[{name!r}]`")

        def decorate(component: T) -> T:
            if name in self._entries:
                raise TypeError(f"{self.kind} type {name!r} is registered twice")
            self._entries[name] = Entry(name, component, config)
            return component

        return decorate

    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self._discovered = True
            for module in self._discover:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._ensure_discovered()
        return list(self._entries)

    def configs(self) -> list[type[BaseModel]]:
        self._ensure_discovered()
        return [entry.config for entry in self._entries.values()]

    def get(self, name: str) -> Entry[T]:
        self._ensure_discovered()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"{self.kind} type {name!r} is not one of: {', '.join(self._entries)}"
            ) from None

    def build(self, cfg: BaseModel, **runtime: Any) -> Any:
        """Build the component registered under ``cfg.type`` from its config and runtime objects."""
        return self.get(cfg.type).component(cfg, **runtime)  # type: ignore[attr-defined,operator]


MODELS: Registry[Any] = Registry("model", discover=("forgeml.models",))
SOURCES: Registry[Any] = Registry("source", discover=("forgeml.data.sources",))
FEATURES: Registry[Any] = Registry("feature", discover=("forgeml.data.features",))
AUGMENTS: Registry[Any] = Registry("augmentation", discover=("forgeml.data.augment",))
