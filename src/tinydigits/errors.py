"""The one error family of tinydigits.

Every error the package raises on purpose is a :class:`TinyDigitsError` whose message is
one line naming the file or value at fault and, where there is one, the fix. The command
line prints exactly these as ``Error: ...``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class TinyDigitsError(Exception):
    """Base of every error tinydigits raises on purpose; the message is one line."""


class ConfigError(TinyDigitsError, ValueError):
    """A bad argument or setting: an unknown model, device or recipe value."""


class MissingExtraError(TinyDigitsError, ImportError):
    """An optional dependency is not installed."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty),
    for one-line errors that wrap another library's multi-line ones."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise a one-line error naming the extra that has it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{purpose} needs {module.split('.')[0]} ({first_line(err)}): "
                                f"pip install 'tinydigits[{extra}]'") from None
