"""Errors that are the user's input, not a bug: the entry points print them as one line.

A ``UserError`` message names the file or config key, what was found and what was expected or what
to do. ``usgs.run.entry`` turns it into ``error: <message>`` and exit status 2 (the traceback only
with ``HYDRA_FULL_ERROR=1``); any other exception is a bug and keeps its traceback. The subclasses
also derive from the builtin error a caller would catch (``ValueError``, ``OSError``).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config value, a missing or malformed file, an output that cannot be written."""


class ConfigError(UserError, ValueError):
    """A config key or value that cannot work (the message names the key)."""


class DataError(UserError, ValueError):
    """A data file whose content is not what the reader expects (mode, values, size)."""


class UnreadableFileError(UserError, OSError):
    """A file that cannot be decoded or loaded at all (truncated, corrupt, not that kind of file)."""


class RunDirInUseError(UserError, RuntimeError):
    """Another live process holds the run directory."""
