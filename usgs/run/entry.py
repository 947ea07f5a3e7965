"""The one error handler of the four entry points: a user error is one line, a bug a traceback.

An exception that is the user's input (see :func:`user_message`: :class:`usgs.errors.UserError`, a
config Hydra cannot compose, a constructor refusing a config value, a missing / unwritable / full
file) ends the program with ``error: <one line>`` on stderr and exit status 2. Any other exception
is a bug: its full traceback, exit status 1. ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) re-raises
everything with its traceback. Two places catch, one handler (:func:`report`)::

    @hydra.main(...)
    @user_errors            # errors of the run itself (before Hydra adds its own line about the job)
    def main(cfg): ...

    run_entry(main)         # errors before the run: composing the config, creating the run directory
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from usgs.errors import UserError

EXIT_USER_ERROR = 2
# The user's own HYDRA_FULL_ERROR, kept while Hydra is told to re-raise (so that this module reports);
# processes the run starts (DDP ranks re-running the script) inherit it.
_USER_FULL_ERROR = "USGS_HYDRA_FULL_ERROR"

# errno -> what to do, for files the user points the run at (inputs, run directories, outputs).
_ERRNO_HINTS = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "expected a file, found a folder",
    errno.EACCES: "choose a writable folder (hydra.run.dir=..., paths.log_dir=..., output=...)",
    errno.EPERM: "choose a writable folder (hydra.run.dir=..., paths.log_dir=..., output=...)",
    errno.EROFS: "the file system is read-only: choose a writable folder (hydra.run.dir=..., paths.log_dir=...)",
    errno.ENOSPC: "the disk is full: free some space or write elsewhere (hydra.run.dir=..., paths.log_dir=...)",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
}
# Errors of a constructor called on config values (hydra.utils.instantiate): the config is wrong.
_CONSTRUCTOR_REFUSALS = (ValueError, TypeError, KeyError, UserError, FileNotFoundError)


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and its explicit causes (``raise ... from``), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def one_line(text: str) -> str:
    """Newlines folded into one line: indented lines (lists of keys or options) joined by commas. An
    error re-raised from a DataLoader worker carries the worker's traceback: its last line is the message."""
    if "Original Traceback" in text:
        text = re.sub(r"^[\w.]+: ", "", text.strip().splitlines()[-1])
    text = text.split("\nConfig search path")[0]  # Hydra's list of config sources: noise here
    out = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not out:
            out = line
        elif out.endswith(":"):
            out += " " + line
        else:
            out += (", " if raw[:1].isspace() else "; ") + line
    return out


def _os_message(err: OSError) -> str | None:
    if err.errno is None:  # raised with a sentence of ours (FileNotFoundError("... missing: <path>"))
        return str(err) if isinstance(err, FileNotFoundError) else None
    if err.errno not in _ERRNO_HINTS:
        return None
    where = f": {err.filename}" if err.filename else ""
    return f"{err.strerror}{where} ({_ERRNO_HINTS[err.errno]})"


def _instantiate_message(err: InstantiationException) -> str | None:
    text = str(err)
    key = re.search(r"full_key: (\S+)", text)
    target = re.search(r"target '([^']+)'", text)
    where = " ".join(f"[{label} {m.group(1)}]" for label, m in (("key", key), ("_target_", target)) if m)
    if text.startswith("Error locating target"):
        return f"no such _target_ {target.group(1) if target else ''!r}: check its spelling {where}"
    cause = err.__cause__
    if isinstance(cause, _CONSTRUCTOR_REFUSALS):
        inner = user_message(cause) or (cause.args[0] if cause.args else type(cause).__name__)
        return f"{inner} {where}"
    return None


def _known_user_errors() -> tuple[type[BaseException], ...]:
    """Error classes of lower floors that are always about the user's files (no UserError there)."""
    from usgs.nets.weights import WeightsFileError
    from usgs.priors.cache import ConfigMismatchError

    return (WeightsFileError, ConfigMismatchError)


def user_message(err: BaseException) -> str | None:
    """The one-line message if ``err`` (or an explicit cause of it) is the user's input, else None."""
    for current in _chain(err):
        message: str | None = None
        if isinstance(current, (UserError, *_known_user_errors())):
            message = str(current)
        elif isinstance(current, InstantiationException):
            message = _instantiate_message(current)
        elif isinstance(current, (ConfigCompositionException, MissingConfigException, OverrideParseException)):
            cause = current.__cause__
            message = str(current) + (f"; {cause}" if isinstance(cause, OmegaConfBaseException) else "")
        elif isinstance(current, MissingMandatoryValue):
            key = getattr(current, "full_key", None) or "a ??? value"
            message = f"no value for {key}: give it on the command line ({key}=...)"
        elif isinstance(current, OSError):
            message = _os_message(current)
        if message is not None:
            return one_line(message)
    return None


def _full_error() -> bool:
    return os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "0")) == "1"


def report(err: Exception) -> None:
    """A user error: print ``error: <one line>`` and exit with status 2; anything else: return."""
    message = None if _full_error() else user_message(err)
    if message is not None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def user_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a Hydra task function: a user error it raises is reported by :func:`report`."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            report(err)
            raise

    return wrapped


def run_entry(main: Callable[[], Any]) -> None:
    """Run ``main`` (a ``@hydra.main`` function): user errors -> ``error: ...`` + exit 2, bugs -> traceback
    and exit 1 (Hydra's status)."""
    full = _full_error()
    saved = {k: os.environ.get(k) for k in (_USER_FULL_ERROR, "HYDRA_FULL_ERROR")}
    os.environ[_USER_FULL_ERROR] = "1" if full else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; reported here
    try:
        main()
    except Exception as err:
        if full:
            raise
        report(err)
        traceback.print_exc()
        sys.exit(1)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
