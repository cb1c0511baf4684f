"""User-facing errors.

Every failure a user can cause and fix (a bad config, a missing file, a bad row, a directory that is
not a run) raises a ``ForgeError``. The command line prints its message on one line and exits with
code 2; anything else that escapes is a bug in forgeml.
"""

from __future__ import annotations


class ForgeError(Exception):
    """An expected failure with a message a user can act on."""

    exit_code = 2


class ConfigError(ForgeError):
    """The experiment config is invalid (unknown key, bad value, wrong type)."""


class DataError(ForgeError):
    """A data file is missing or a row cannot be read."""


class RunDirError(ForgeError):
    """A run directory is missing, incomplete or corrupt."""


class CheckpointError(ForgeError):
    """No usable checkpoint could be found to resume from."""


class ExportError(ForgeError):
    """A model cannot be exported, or the exported model does not match the trained one."""


class BundleError(ForgeError):
    """An export bundle is missing, incomplete or corrupt, or cannot run here."""


class TrainingError(ForgeError):
    """Training cannot go on: the loss became nan or inf (the learning rate is too high, or the data holds extreme values)."""


class PredictionError(ForgeError):
    """The model's outputs are not finite numbers (nan or inf), so they cannot be predictions."""
