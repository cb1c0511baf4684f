"""Architectures, one file each, registered by their YAML ``type``. Architecture only: no training code."""

from forgeml.models import cnn, linear, mlp  # noqa: F401  (importing registers them)
