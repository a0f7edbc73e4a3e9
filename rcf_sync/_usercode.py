"""How a handle calls the factory and the user's callbacks, and what it
does when they raise (see ``_callbacks`` for the queue they run in)."""

from __future__ import annotations

import functools
import logging
import operator
import weakref
from types import FunctionType
from typing import Any, Callable, NamedTuple

from ._connection import Connection
from ._factory import ReconnectingClientFactory
from ._parts import HandleParts

__all__ = ["RunsUserCode"]

log = logging.getLogger("rcf_sync")

# The factory methods the client calls, each with what it calls in turn: a
# method is ours to run inline only if none of these is overridden.
_FACTORY_CALLS = {
    "clientConnectionFailed": ("clientConnectionFailed", "retry"),
    "clientConnectionLost": ("clientConnectionLost", "retry"),
    "startedConnecting": ("startedConnecting",),
    "resetDelay": ("resetDelay",),
    "stopTrying": ("stopTrying",),
    "doStart": ("doStart", "startFactory"),
    "doStop": ("doStop", "stopFactory"),
    "buildProtocol": ("buildProtocol", "protocol"),  # builds the user's protocol
}
_FACTORY_METHODS = tuple(sorted({m for ms in _FACTORY_CALLS.values() for m in ms}))
#: Always the user's, whatever the class: the protocol it builds.
_USER_ALWAYS = frozenset({"protocol"})


class _ClassFacts(NamedTuple):
    overridden: frozenset[str]           # the methods the class itself overrides
    inherited: tuple[str, ...]           # the others, plain functions of ours
    functions: list[Callable[..., Any]]  # those functions, in that order
    read: Callable[[object], Any] | None  # their values on an instance, at once


_class_facts: weakref.WeakKeyDictionary[type, _ClassFacts] = weakref.WeakKeyDictionary()


def _facts_of(cls: type) -> _ClassFacts:
    facts = _class_facts.get(cls)  # once per factory class
    if facts is None:
        if not issubclass(cls, ReconnectingClientFactory):
            overridden = frozenset(_FACTORY_METHODS)
        else:
            overridden = frozenset(m for m in _FACTORY_METHODS if getattr(cls, m, None)
                                   is not getattr(ReconnectingClientFactory, m, None))
        inherited = tuple(m for m in _FACTORY_METHODS if m not in overridden
                          and m not in _USER_ALWAYS and callable(getattr(cls, m, None)))
        functions = [getattr(cls, m) for m in inherited]
        plain = len(inherited) > 1 and all(type(f) is FunctionType for f in functions)
        facts = _class_facts[cls] = _ClassFacts(
            overridden, inherited, functions, operator.attrgetter(*inherited) if plain else None)
    return facts


_FUNCTION_OF = operator.attrgetter("__func__")


def _ours_to_run(factory: object) -> frozenset[str]:
    """The factory methods the client may call inline on the loop: those
    that run only our code (a method set on the instance overrides ours as a
    subclass's would). ``buildProtocol`` always builds user code."""
    facts = _facts_of(type(factory))
    # getattr, not factory.__dict__: reading __dict__ would make every
    # factory hold a real dictionary of its attributes. The usual instance
    # sets none of the methods: one read of them all, one comparison.
    read = facts.read
    if read is not None:
        try:
            same = list(map(_FUNCTION_OF, read(factory))) == facts.functions
        except AttributeError:  # one of them is not a method
            same = False
        if same:
            return _ours_given(facts.overridden)
    extra = frozenset(m for m, function in zip(facts.inherited, facts.functions)
                      if getattr(getattr(factory, m, None), "__func__", None) is not function)
    return _ours_given(facts.overridden | extra)


@functools.lru_cache(maxsize=256)
def _ours_given(overridden: frozenset[str]) -> frozenset[str]:
    # Shared by every factory of a class: a client holds no set of its own.
    overridden = overridden | _USER_ALWAYS
    return frozenset(name for name, uses in _FACTORY_CALLS.items()
                     if not overridden.intersection(uses))


class RunsUserCode(HandleParts):
    """Mixin for handles."""

    __slots__ = ()

    def _factory_calls(self, calls: list[tuple[str, tuple[Any, ...]]],
                       then: Callable[[Any], None] | None = None,
                       always: bool = False) -> None:
        """Loop: call the factory's methods ``calls`` ((name, args) pairs) in
        order, then ``then(result of the last)`` on the loop. Inline when the
        factory is ours; in the user-code queue otherwise. An exception
        stops the handle (:meth:`_user_failed`); with ``always``, ``then``
        still runs (with None)."""
        factory = self.factory
        # Ours cannot block: no hand-off (the usual case). A subclass's
        # inherited methods run inline too, but only when none of its own
        # code is queued for this handle, so that the order stays the order.
        user = self._user_code
        if self._trusted or ((user is None or user.idle())
                             and all(name in self._ours for name, _ in calls)):
            name: str | None = None
            result: Any = None
            try:
                for name, args in calls:
                    result = getattr(factory, name)(*args)
            except Exception as exc:
                self._user_failed(f"{type(factory).__name__}.{name}()", exc)
                if not always:
                    return
                result = None
            if then is not None:
                then(result)
            return
        where: list[str | None] = [None]

        def run() -> Any:
            result: Any = None
            for name, args in calls:
                where[0] = name
                result = getattr(factory, name)(*args)
            return result

        def done(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                self._user_failed(f"{type(factory).__name__}.{where[0]}()", exc)
                if not always:
                    return
            if then is not None:
                then(result)

        self._user.run(run, (), done)

    def _user_callback(self, label: str, fn: Callable[..., Any], *args: Any) -> None:
        """Loop: run user callback ``fn(*args)`` in the queue; raising stops
        the handle."""
        def done(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                self._user_failed(label, exc)
        self._user.run(fn, args, done)

    def _user_failed(self, where: str, exc: BaseException) -> None:
        """Loop: user code raised ``exc``. Log it once, and stop truthfully:
        STOPPED, ``last_error`` set, waiters get ``GaveUp`` chained to it,
        pending retries cancelled; ``reconnect_now()`` starts again."""
        log.error("%s: %s raised %s: %s; the client stopped trying (reconnect_now() starts "
                  "again)", self.name, where, type(exc).__name__, exc,
                  exc_info=(type(exc), exc, exc.__traceback__))
        with self._lock:
            if self._closed:
                return
            self._halted = exc
            self._stats.last_error = exc
            self._stop_reason = f"{where} raised {type(exc).__name__}: {exc}"
            to_close = self._halt_locked()
        if self._factory_clock is not None:
            self._factory_clock.cancel_all()
        for item in to_close:
            if isinstance(item, Connection):
                self._close_conn(item)
            else:
                self._cancel_attempt(item)
