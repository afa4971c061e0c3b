"""Calls in flight share the free memory: ``budget=None`` ("auto") runs in one process stay inside it together.

A fixed budget is per call. A call without one plans within the device's free memory; when several run
at once (threads serving one pipeline through one applied VAE), each must leave room for the others.
So each plans within

    min(free memory now, free memory when the first call in flight began - what the others planned)

and holds its plan's peak until it returns. Planning and holding happen under one lock, so two calls
never plan for the same bytes; execution runs concurrently. Counting the others' whole planned peaks
even where they have allocated part of it already errs on the safe side. A call whose share is too
small for any plan waits for a call holding memory to return, then plans again (``wait``); with none
to wait for, its BudgetError stands.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading

__all__ = ["Share", "sharing", "current"]

_PLANNING = threading.Lock()  # held by one call from its first look at the free memory to its hold()
_LEDGER = threading.Condition()  # guards the two dicts below; notified when a call gives its share back
_held: dict[str, dict[int, int]] = {}  # device -> {call: bytes its plan holds}
_pool: dict[str, int] = {}  # device -> free bytes when its first call in flight began
_current: contextvars.ContextVar[Share | None] = contextvars.ContextVar("vaekit_share", default=None)


class Share:
    """One call's part of its device's free memory."""

    def __init__(self):
        self.device: str | None = None
        self.planning = False

    def free(self, device, free_now: int) -> int:
        """The bytes this call may plan for; from here to ``hold`` no other call plans."""
        if not self.planning:
            _PLANNING.acquire()
            self.planning = True
        key = str(device)
        with _LEDGER:
            if self.device is None:
                self.device = key
                if not _held.get(key):
                    _pool[key] = free_now
                _held.setdefault(key, {})[id(self)] = 0
            others = sum(n for call, n in _held[key].items() if call != id(self))
            return max(0, min(free_now, _pool[key] - others))

    def wait(self) -> bool:
        """Too little is left for this call: wait until another call gives its share back (True), or
        say there is none to wait for (False). No other call is kept from planning meanwhile."""
        with _LEDGER:
            if self.device is None or not any(n for call, n in _held[self.device].items() if call != id(self)):
                return False
            self._done_planning()
            _LEDGER.wait()
        _PLANNING.acquire()
        self.planning = True
        return True

    def hold(self, nbytes: int) -> None:
        """This call's plan is made: hold its peak, and let the next call plan."""
        with _LEDGER:
            if self.device is not None:
                _held[self.device][id(self)] = nbytes
        self._done_planning()

    def close(self) -> None:
        with _LEDGER:
            if self.device is not None:
                calls = _held[self.device]
                calls.pop(id(self), None)
                if not calls:
                    del _held[self.device], _pool[self.device]
                _LEDGER.notify_all()
        self._done_planning()

    def _done_planning(self) -> None:
        if self.planning:
            self.planning = False
            _PLANNING.release()


@contextlib.contextmanager
def sharing():
    """Within: this call's free memory is its share (``current``)."""
    share = Share()
    token = _current.set(share)
    try:
        yield share
    finally:
        _current.reset(token)
        share.close()


def current() -> Share | None:
    """The share of the call running in this thread, if it has no budget of its own."""
    return _current.get()
