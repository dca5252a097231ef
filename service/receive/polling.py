"""Shorter reactor polls while an association is transferring.

pynetdicom runs two polling loops per association: the DUL reactor sleeps
``_run_loop_delay`` (1 ms) whenever its event queue is empty, and the
acceptor's own reactor sleeps a fixed 1 ms before every look at the DIMSE
queue. During a C-STORE transfer on one association each instance waits on
both loops (the request is picked up, the response is sent) on average about
half a poll each: with 0.5 MB CT slices that capped a handler that does
nothing at about 350 instances/s on loopback, and it was the largest share of
theranode's time per instance.

With :func:`install`, both loops poll every 0.1 ms, but only for an
association that the listener marked busy (:func:`mark_busy`: it was
accepted or stored something in the last :data:`BUSY_WINDOW_S`); an idle or
negotiating association, and every association theranode opens as a sender,
keep pynetdicom's 1 ms (0.1 ms polls cost about 7 % of a core per idle
association).

What it patches, for the whole process: pynetdicom has no setting for the
acceptor's poll, so :func:`install` replaces the module attribute ``time``
of ``pynetdicom.association`` and ``pynetdicom.dul`` (what their reactors
call ``time.sleep`` on) with a proxy that changes nothing but ``sleep``, and
``sleep`` only on a busy association's reactor threads. It affects every
pynetdicom association in the process, incoming and outgoing, which is why
it is not done on import or by the listener but once, explicitly, in the
node's start-up (:meth:`theranode.service.app.Node.start`); it is idempotent,
and without it the listener works with pynetdicom's polls. ``tests/service/
test_polling.py`` fails when a pynetdicom upgrade changes the loops this
relies on.
"""

from __future__ import annotations

import threading
import time
import types
from typing import Any

import pynetdicom.association
import pynetdicom.dul

#: Poll interval of a busy association's reactors.
FAST_POLL_S = 0.0001
#: An association counts as busy this long after its last C-STORE.
BUSY_WINDOW_S = 0.25
#: pynetdicom's own poll: only sleeps this short or shorter are shortened.
PYNETDICOM_POLL_S = 0.001

_BUSY_ATTRIBUTE = "_theranode_busy_until"


def mark_busy(assoc: Any) -> None:
    """Poll ``assoc``'s reactors fast for the next :data:`BUSY_WINDOW_S`."""
    setattr(assoc, _BUSY_ATTRIBUTE, time.monotonic() + BUSY_WINDOW_S)


def _association_of(thread: threading.Thread) -> Any:
    """The association a reactor thread belongs to (the acceptor, or a DUL's)."""
    if isinstance(thread, pynetdicom.dul.DULServiceProvider):
        return thread.assoc
    return thread


def poll_interval(requested_s: float) -> float:
    """The sleep to take instead of ``requested_s`` on the calling thread."""
    if requested_s > PYNETDICOM_POLL_S:
        return requested_s
    busy_until = getattr(_association_of(threading.current_thread()), _BUSY_ATTRIBUTE, 0.0)
    if busy_until > time.monotonic():
        return min(requested_s, FAST_POLL_S)
    return requested_s


class _ReactorTime(types.ModuleType):
    """The ``time`` module, except that ``sleep`` follows :func:`poll_interval`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(poll_interval(seconds))


def install() -> None:
    """Let busy associations' reactors poll every :data:`FAST_POLL_S`, process-wide.

    Replaces ``time`` in ``pynetdicom.association`` and ``pynetdicom.dul`` by
    a proxy (see the module docstring). Idempotent: a second call changes
    nothing.
    """
    for module in (pynetdicom.association, pynetdicom.dul):
        if not isinstance(getattr(module, "time"), _ReactorTime):  # noqa: B009
            setattr(module, "time", _ReactorTime("time"))  # noqa: B010
