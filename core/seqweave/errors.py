"""The exceptions a user can cause. Every one is a :class:`SeqweaveError`.

Messages name the file, the field or tensor, the value found and what is allowed,
so that the command line can print them as one ``error: ...`` line.
"""

from __future__ import annotations

__all__ = ["SeqweaveError", "ConfigError", "CheckpointError", "PluginError"]


class SeqweaveError(Exception):
    """Base class of every error caused by user input (config, checkpoint, arguments)."""


class ConfigError(SeqweaveError, ValueError):
    """A configuration (file, dict or keyword arguments) is invalid."""


class CheckpointError(SeqweaveError):
    """A checkpoint folder, file or tensor is missing, unreadable or of the wrong shape."""


class PluginError(SeqweaveError):
    """A plugin failed to load, or registered something invalid (e.g. a duplicate name)."""
