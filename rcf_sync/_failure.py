"""``Failure``: an exception packaged as Twisted's ``twisted.python.failure.Failure``.

Code written for Twisted receives its ``reason`` arguments
(``clientConnectionFailed``, ``clientConnectionLost``, a protocol's
``connectionLost``) as a ``Failure`` and calls ``reason.getErrorMessage()``,
``reason.check(...)`` or ``reason.trap(...)`` on it; this class gives such
code the same surface without Twisted. It is a plain value: it never captures
the current exception behind the caller's back unless built without one, and
:func:`as_failure` (what the client uses) gives it no traceback of its own.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType
from typing import Any, NoReturn

__all__ = ["Failure", "as_failure"]


def _qual(cls: type) -> str:
    # Twisted's reflect.qual: module and class name (not the qualified name).
    return f"{cls.__module__}.{cls.__name__}"


def _safe_str(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    try:
        return str(value)
    except Exception as exc:  # a broken __str__ must not hide the failure
        return f"<{_qual(type(value))} instance, str() raised {_qual(type(exc))}>"


class Failure:
    """An exception with Twisted's ``Failure`` interface.

    ``Failure(exc)`` wraps the exception instance ``exc``; ``Failure()``
    inside an ``except`` block wraps the exception being handled (and
    ``ValueError`` outside one); ``Failure(other_failure)`` copies it.
    ``exc_type`` and ``exc_tb`` may be given as with Twisted.

    Attributes: ``value`` (the exception), ``type`` (its class) and ``tb``
    (its traceback, or ``None``). Thread-safe to read; never mutated after
    construction except by :meth:`cleanFailure`.
    """

    value: BaseException
    #: The exception's class (Twisted also tolerates a name given as
    #: ``exc_type``, hence not typed as a class).
    type: Any
    tb: TracebackType | None

    def __init__(
        self,
        exc_value: BaseException | Failure | None = None,
        exc_type: Any = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        tb: TracebackType | None = None
        if exc_value is None:
            exc_type, exc_value, tb = sys.exc_info()
            if exc_value is None:
                raise ValueError("Failure() needs an exception: none is being handled")
        if isinstance(exc_value, Failure):
            self.__dict__.update(exc_value.__dict__)
            return
        self.value = exc_value
        self.type = type(exc_value) if exc_type is None else exc_type
        if tb is None:
            tb = exc_tb or getattr(exc_value, "__traceback__", None)
        self.tb = tb

    # -- Twisted's interface --------------------------------------------------

    @property
    def parents(self) -> list[Any]:
        """The fully qualified names of ``type`` and its bases, most derived first."""
        if isinstance(self.type, type):
            return [_qual(cls) for cls in self.type.__mro__]
        return [self.type]

    def check(self, *errorTypes: type | str) -> type | str | None:
        """Return the first of ``errorTypes`` that ``type`` is (a subclass
        of), or ``None``. An entry may also be a class's fully qualified name
        (``"builtins.ConnectionRefusedError"``), as with Twisted."""
        for candidate in errorTypes:
            if isinstance(candidate, str):
                if candidate in self.parents:
                    return candidate
            elif isinstance(candidate, type) and isinstance(self.type, type):
                if issubclass(self.type, candidate):
                    return candidate
            elif candidate is self.type:
                return candidate
        return None

    def trap(self, *errorTypes: type | str) -> type | str:
        """Return what :meth:`check` matched; when nothing matches, raise
        the wrapped exception again (as Twisted does on Python 3)."""
        matched = self.check(*errorTypes)
        if matched is None:
            self.raiseException()
        return matched

    def raiseException(self) -> NoReturn:
        """Raise the wrapped exception, with its traceback when there is one."""
        raise self.value.with_traceback(self.tb)

    def getErrorMessage(self) -> str:
        """``str(value)``: the exception's message, never raising."""
        if isinstance(self.value, Failure):
            return self.value.getErrorMessage()
        return _safe_str(self.value)

    def getTraceback(self) -> str:
        """The traceback as Python prints it, Twisted's way when there is
        none (``Failure: builtins.KeyError: 'x'``)."""
        lines = ["Traceback (most recent call last):\n"]
        if self.tb is not None:
            lines.extend(traceback.format_tb(self.tb))
        else:
            lines.append("Failure: ")
        lines.append(f"{self._type_name()}: {_safe_str(self.value)}\n")
        return "".join(lines)

    def getBriefTraceback(self) -> str:
        """One line naming the type and message, then ``file:line:function``
        per frame (Twisted's brief format)."""
        head = "Traceback" if self.tb is not None else "Traceback (failure with no frames)"
        lines = [f"{head}: {_safe_str(self.type)}: {_safe_str(self.value)}\n"]
        for frame in traceback.extract_tb(self.tb) if self.tb is not None else ():
            lines.append(f"{frame.filename}:{frame.lineno}:{frame.name}\n")
        return "".join(lines)

    def getTracebackObject(self) -> TracebackType | None:
        """The traceback object, or ``None``."""
        return self.tb

    def cleanFailure(self) -> None:
        """Drop the traceback (and the exception's), keeping type and value."""
        self.tb = None
        if getattr(self.value, "__traceback__", None) is not None:
            self.value.__traceback__ = None

    def __repr__(self) -> str:
        return f"<{_qual(type(self))} {self._type_name()}: {self.getErrorMessage()}>"

    def __str__(self) -> str:
        return f"[Failure instance: {self.getBriefTraceback()}]"

    def __getstate__(self) -> dict[str, Any]:
        # Tracebacks do not pickle; the type and value do.
        state = self.__dict__.copy()
        state["tb"] = None
        return state

    def _type_name(self) -> str:
        return _qual(self.type) if isinstance(self.type, type) else _safe_str(self.type)


def as_failure(exc: BaseException | Failure) -> Failure:
    """``exc`` as a :class:`Failure` whose ``tb`` is ``None`` (the exception
    itself is left as it is); a ``Failure`` is returned unchanged. What the
    client passes as ``reason``: cheap, with no traceback of its own (as
    the reasons Twisted's transports build)."""
    if isinstance(exc, Failure):
        return exc
    failure = Failure(exc)
    failure.tb = None
    return failure
