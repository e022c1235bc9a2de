"""Reading what user code produced without trusting it.

A task's exception is user code all the way down: ``str(exc)`` runs its ``__str__``, which
may raise (anything, ``SystemExit`` included), recurse, or return a string millions of
characters long; its type may have a metaclass whose ``__qualname__`` lookup raises; the
traceback module calls all of that again. Everything here reads such objects the careful
way (the type's own slots, not attribute lookups a metaclass can override), catches
whatever the object raises, and bounds what it returns, so describing a failure can itself
never fail, nor store anything huge.

The one thing let through is ``Interrupted``: the worker raises it into a task's thread to
stop it (cancel, shutdown), and it may land while that task's failure is being described.
"""

from __future__ import annotations

import traceback
from typing import Any

from .._message import RemoteError

MESSAGE_CAP = 16 * 1024  # characters of an error message that are kept
TRACEBACK_CAP = 64 * 1024  # characters of a traceback that are kept (head and tail)
NAME_CAP = 1000  # characters of a type's qualified name
_MRO_CAP = 1000  # base classes named (retry_on matches against these)
_NOTE_ROOM = 64  # what the "[... N characters cut ...]" line takes

_type_qualname = type.__dict__["__qualname__"].__get__
_type_module = type.__dict__["__module__"].__get__
_type_mro = type.__dict__["__mro__"].__get__
_exc_traceback = BaseException.__dict__["__traceback__"].__get__


class Interrupted(BaseException):  # raised into a task, like KeyboardInterrupt
    """Raised inside a thread-pool task to stop it (cancel or shutdown).

    A ``BaseException`` so that a task's ``except Exception`` does not swallow it.
    """


def clip(text: str, cap: int) -> str:
    """``text`` if it has at most ``cap`` characters; else its head and tail around a line
    that says how much was cut. The tail gets three quarters: the end of a traceback (the
    innermost frames and the exception) matters most."""
    if len(text) <= cap:
        return text
    keep = max(cap - _NOTE_ROOM, 0)
    head = keep // 4
    tail = keep - head
    cut = len(text) - keep
    return f"{text[:head]}\n[... {cut:,} characters cut ...]\n{text[len(text) - tail :]}"


def plain(text: str, cap: int) -> str:
    """A ``str`` (or subclass) as an exact ``str`` of at most ``cap`` characters that
    encodes to UTF-8: lone surrogates become ``\\udXXX`` escapes."""
    exact = str.__str__(text)  # a subclass's overrides are not called; an exact copy
    exact = clip(exact, cap)
    if not exact.isascii():
        exact = exact.encode("utf-8", "backslashreplace").decode("utf-8")
    return exact


def name_of(t: type) -> str:
    """``module.QualName`` of a type, read from its slots (a metaclass cannot intercept)."""
    try:
        qualname: Any = _type_qualname(t)
        module: Any = _type_module(t)
    except Interrupted:
        raise
    except BaseException:
        return "<unnamed type>"
    qual = plain(qualname, NAME_CAP) if _is_str(qualname) else "<unnamed type>"
    if _is_str(module):
        return plain(f"{plain(module, NAME_CAP)}.{qual}", NAME_CAP)
    return qual


def short_name(t: type) -> str:
    """The type's qualified name without its module (``ValueError``, ``Outer.Error``)."""
    try:
        qualname: Any = _type_qualname(t)
    except Interrupted:
        raise
    except BaseException:
        qualname = None
    return plain(qualname, NAME_CAP) if _is_str(qualname) else "<unnamed type>"


def _is_str(obj: object) -> bool:
    # Not isinstance(), which asks obj.__class__ (a property that may raise) when the
    # real type is not str.
    return issubclass(type(obj), str)


def text_of(obj: object, cap: int = MESSAGE_CAP) -> str:
    """``str(obj)``, bounded; ``<unprintable T (str() raised E)>`` when that raises."""
    try:
        text = str(obj)
    except Interrupted:
        raise
    except BaseException as inner:
        return f"<unprintable {short_name(type(obj))} (str() raised {short_name(type(inner))})>"
    return plain(text, cap)


def lineage(t: type) -> tuple[str, ...]:
    """The qualified names of a type and its bases, for ``retry_on``."""
    try:
        mro = _type_mro(t)
    except Interrupted:
        raise
    except BaseException:
        return (name_of(t),)
    return tuple(name_of(base) for base in mro[:_MRO_CAP])


def describe(exc: BaseException) -> tuple[RemoteError, tuple[str, ...]]:
    """What a result store keeps of an exception (type, message, traceback) and the names
    of its type's lineage. Never raises, except ``Interrupted``."""
    kind = type(exc)
    name = name_of(kind)
    message = text_of(exc)
    return RemoteError(name, message, _formatted(exc, name, message)), lineage(kind)


def _formatted(exc: BaseException, name: str, message: str) -> str:
    """The traceback as the interpreter would print it; when the traceback module itself
    trips over the exception, its frames and the description made here."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Interrupted:
        raise
    except BaseException:
        try:
            frames = "".join(traceback.format_tb(_exc_traceback(exc)))
        except Interrupted:
            raise
        except BaseException:
            frames = ""
        text = f"Traceback (most recent call last):\n{frames}{name}: {message}\n"
    return plain(text, TRACEBACK_CAP)
