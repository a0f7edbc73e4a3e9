"""After ``os.fork()``: what a handle does in the child.

The at-fork hook (``_backends._base.after_fork_in_child``, run after the
backends have reset their own state) visits every handle started and not
closed. Each forgets what belongs to the parent -- its lock (another thread
may have held it at the fork), its waiters, its queued user code -- and
closes its copy of the parent's sockets without a word to the peer (the
descriptor only, never ``shutdown()``), so the parent's stream is
untouched. It makes its own connection the first time it is used in the
child (``Handle._enter``), so a child that forks only to ``exec`` starts no
thread and opens no connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backends._base import after_fork_in_child
from ._connection import Owner
from ._lease import NOBODY_QUEUED
from ._parts import HandleParts
from ._state import State

if TYPE_CHECKING:
    from ._connection import Connection
    from ._handle import Handle

__all__ = ["ForkSafe", "live"]


# Handles started and not closed (the keys), for the after-fork clean-up.
# Held strongly, in a dict (a fifth of a WeakSet's bytes per handle): a
# started handle holds its share of the background until close() anyway, and
# while it has a timer, an attempt or a connection the background reaches it.
live: dict[Handle, None] = {}


def _after_fork() -> None:
    for handle in list(live):
        handle._forked()


after_fork_in_child(_after_fork)


class ForkSafe(HandleParts):
    """Mixin for handles: the child's side of a fork."""

    __slots__ = ()

    def _drop_in_child(self, conn: Connection) -> None:
        """At-fork hook: forget ``conn`` without a word to the peer (closing
        our copy of the descriptor only; the parent's stream is untouched)."""
        conn.owner = Owner.DEAD
        watch, conn.watch = conn.watch, None
        if watch is not None:
            watch.abandon()
        conn.heartbeat = None
        try:
            conn.sock.close()
        except OSError:
            pass

    def _forked_locked_state(self) -> None:
        # At-fork hook: the parent's waiters, locks and queued user code are
        # not in this process.
        self._lock = self._backend.lock()
        self._changed = None
        self._waiters = 0
        self._waiting_seen = None
        self._leases = NOBODY_QUEUED
        if self._user_code is not None:
            self._user_code.reset_after_fork(self._lock)
        self._revive = not self._closed and self._state is not State.IDLE
