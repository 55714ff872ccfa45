"""The errors radial-diffusers raises for bad input: one base class, :class:`RadialError`, and a few subclasses.

A ``RadialError`` is a user error with a message that names the problem and the fix; the CLI prints it as one line
(``radial-diffusers <command>: error: <message>``, exit status 2). Every other exception is a bug and keeps its
traceback. Subclasses also derive from the builtin a caller would expect, so ``except ValueError`` /
``except TypeError`` / ``except OSError`` written against earlier versions keeps working.

Example:
    >>> import radial_diffusers as rd
    >>> try:
    ...     rd.radial_block_mask(8, 256, model="sora")
    ... except rd.RadialError as exc:
    ...     print(type(exc).__name__)
    UnsupportedModelError
"""

from __future__ import annotations

import re

__all__ = ["first_sentences", "RadialError", "ConfigError", "UnsupportedModelError", "ModelLoadError", "NotWritableError"]


class RadialError(Exception):
    """Base of every user-facing error of radial-diffusers (bad input, not a bug)."""


class ConfigError(RadialError, ValueError):
    """An option, a config file entry or an argument has a value that cannot work (the message says which)."""


class UnsupportedModelError(RadialError, TypeError, ValueError):
    """A model, pipeline or family radial-diffusers has no registry entry for (the message lists the supported ones).

    Raised before anything is changed: the model is left as it was. A ``TypeError`` (a transformer of another class)
    and a ``ValueError`` (an unknown family name) both, as earlier versions raised one or the other."""


class ModelLoadError(RadialError, OSError):
    """A model could not be loaded: a path that does not exist, a Hub id that is not cached offline, a bad config."""


class NotWritableError(RadialError, PermissionError):
    """An output location that cannot be written, found before any work starts."""


def first_sentences(text: str, limit: int = 300) -> str:
    """The first line of an error message, shortened at a sentence end (never mid-sentence) past ``limit`` characters:
    how a message from another library (Diffusers, the Hub) is quoted in a one-line error."""
    first = (text.strip().splitlines() or [""])[0]
    if len(first) <= limit:
        return first
    ends = [m.end() for m in re.finditer(r"[.;:!?](\s|$)", first)]
    cut = max((e for e in ends if e <= limit), default=None) or min(ends, default=len(first))
    return first[:cut].rstrip()
