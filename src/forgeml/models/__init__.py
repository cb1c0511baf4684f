"""Architectures, one file each, registered by their YAML ``type``. Architecture only: no training code."""

# importing registers them, in this order (attention imports rnn, so rnn comes first whatever the order here)
from forgeml.models import cnn, linear, mlp  # noqa: F401
from forgeml.models import rnn, attention, textcnn, transformer, gpt, hf  # noqa: F401
