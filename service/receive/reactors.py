"""Reactors that wait for work: an accepted association costs no CPU while it waits.

pynetdicom (3.0) runs two loops per association, and both poll:

- the DUL reactor (:meth:`pynetdicom.dul.DULServiceProvider.run_reactor`)
  sleeps ``_run_loop_delay`` (1 ms) whenever it has nothing to do, then looks
  at its primitive queue and asks ``select`` (timeout 0) whether the socket
  has data;
- the acceptor's reactor (``Association._run_reactor``) sleeps a fixed 1 ms
  before every look at the DIMSE message queue.

Each received instance therefore waits about half a poll in each loop, and a
busy association's two threads wake 2,000 times a second; with several
associations they take turns on the GIL. (theranode used to shorten the polls
to 0.1 ms while an association was busy, which bought latency with CPU: four
parallel associations were slower in total than one; upstream, pynetdicom
issue 367 reports several senders at once taking the sum of their times, and
issue 650 the reactor sleeping before every event.)

Here both loops block until there is work, with a bound so timers are still
honoured:

- the DUL reactor blocks in ``select`` on its socket *and* a wake-up socket
  that is written whenever another thread queues a primitive for it
  (``to_provider_queue``, ``event_queue``) or asks it to stop;
- the acceptor's reactor blocks on an event set whenever the DUL queues a
  DIMSE message or an A-RELEASE/A-ABORT for it (``dimse.msg_queue``,
  ``dul.to_user_queue``), when the DUL thread ends, and when the association
  is killed.

Both wait at most :data:`MAX_WAIT_S`, and never past the expiry of the ARTIM
timer (DUL) or the network idle timer (acceptor), so every timeout fires as
before. The loop bodies are pynetdicom's own, copied unchanged except for
the wait; ``tests/service/test_reactors.py`` pins the upstream source they
were copied from, so a pynetdicom upgrade that changes either loop fails the
test until this module is reviewed. The change belongs upstream: the patch
against pynetdicom 3.0.4 is described in ``docs/interoperability.md``
("pynetdicom's reactors").

How it is applied: :func:`make_event_driven` takes an :class:`Association`
that pynetdicom's request handler has just built (not yet started), gives its
four queues a notifying subclass and changes the class of the association and
of its DUL to the subclasses below, which add methods only. Only the
listener's associations are changed (:class:`~theranode.service.receive.scp.
GuardedServer`); associations theranode opens as a sender keep pynetdicom's
loops.
"""

from __future__ import annotations

import errno
import logging
import queue
import select
import socket
import threading
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

# The loggers of the pynetdicom modules the loops below are copied from.
LOGGER = logging.getLogger("pynetdicom.dul")
ASSOC_LOGGER = logging.getLogger("pynetdicom.association")
logger = logging.getLogger(__name__)

#: Longest a reactor blocks without work; bounds how late a timer or a missed
#: wake-up can be noticed.
MAX_WAIT_S = 0.05


class _NotifyingQueue(queue.Queue[Any]):
    """A queue that calls ``notify`` after every put from another thread than ``owner``.

    It starts with the items of ``replaced``, the queue it takes the place of
    (pynetdicom queues "transport connection open" as soon as the socket is made).
    """

    def __init__(self, owner: threading.Thread, notify: Any, replaced: queue.Queue[Any]) -> None:
        super().__init__()
        self._owner = owner
        self._notify = notify
        with replaced.mutex:
            self.queue.extend(replaced.queue)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if threading.current_thread() is not self._owner:
            self._notify()


class _Wakeup:
    """A socket pair: one end is watched by ``select``, the other written to wake it."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except BlockingIOError:  # already full of wake-ups: the reader will wake
            pass
        except OSError as exc:  # closed at the end of the association
            if exc.errno not in (errno.EBADF, errno.EPIPE, errno.ENOTCONN):
                raise

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL provider whose reactor blocks in ``select`` instead of sleeping."""

    _wakeup: _Wakeup

    def _wait_for_work(self) -> None:
        """Block until the socket has data, a primitive is queued, or a timer is due."""
        if self.to_provider_queue.queue or self.event_queue.queue or self._kill_thread:
            return
        wrapper = self.socket
        sock = wrapper.socket if wrapper is not None else None
        if wrapper is None or sock is None:  # no transport (closed): pynetdicom's own poll
            time.sleep(self._run_loop_delay)
            return
        if wrapper.ready:  # bytes select cannot see: TLS's buffer, the listener's prefix
            return
        # Timer.remaining is the whole timeout before the timer starts, 1 s without one.
        timeout = min(MAX_WAIT_S, max(self.artim_timer.remaining, 0.0))
        try:
            ready, _, _ = select.select([sock, self._wakeup.reader], [], [], timeout)
        except (OSError, ValueError):  # the socket closed under us: the loop sees it
            return
        if self._wakeup.reader in ready:
            self._wakeup.drain()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wakeup.wake()

    def run(self) -> None:
        # pynetdicom bound the thread's target to the base class's run_reactor
        # when it built the thread; run this class's. (The target would also
        # pass context variables when pynetdicom's PASS_CONTEXTVARS is set;
        # theranode does not set it.)
        try:
            self.run_reactor()
        finally:
            cast("EventDrivenAssociation", self.assoc)._work.set()
            self._wakeup.close()

    # pynetdicom 3.0.4 dul.py DULServiceProvider.run_reactor, with
    # ``time.sleep(self._run_loop_delay)`` replaced by ``self._wait_for_work()``.
    def run_reactor(self) -> None:  # pragma: no cover - copied loop, exercised end to end
        """Run the DUL reactor (pynetdicom's loop; waits for work instead of sleeping)."""
        self._idle_timer.start()
        self.socket = cast(Any, self.socket)
        sleep = False

        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                self._wait_for_work()

            if self._kill_thread:
                break

            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False


class EventDrivenAssociation(Association):
    """pynetdicom's acceptor whose reactor waits on an event instead of sleeping 1 ms."""

    _work: threading.Event

    def _wait_for_work(self) -> None:
        """Block until a message, a release or abort, the DUL's end, or the idle timeout."""
        if (self.dimse.msg_queue.queue or self.dul.to_user_queue.queue or self._kill
                or not self.dul.is_alive()):
            return
        # As for the ARTIM timer: remaining is 1 s when there is no network timeout.
        self._work.wait(min(MAX_WAIT_S, max(self.dul._idle_timer.remaining, 0.0)))
        self._work.clear()

    def kill(self) -> None:
        self._work.set()
        super().kill()

    # pynetdicom 3.0.4 association.py Association._run_reactor, with
    # ``time.sleep(0.001)`` replaced by ``self._wait_for_work()``.
    def _run_reactor(self) -> None:  # pragma: no cover - copied loop, exercised end to end
        """Run the acceptor reactor (pynetdicom's loop; waits for work instead of sleeping)."""
        self._is_paused = False
        while not self._kill:
            self._wait_for_work()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                ASSOC_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                ASSOC_LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                ASSOC_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


def make_event_driven(assoc: Association) -> None:
    """Make a new, not yet started acceptor ``assoc`` wait for work (see the module docstring).

    Raises
    ------
    TypeError
        ``assoc`` is not a pynetdicom acceptor that has not started.
    """
    if type(assoc) is not Association or not assoc.is_acceptor or assoc.is_alive():
        raise TypeError(f"expected a new pynetdicom acceptor Association, found {assoc!r}")
    dul = assoc.dul
    if type(dul) is not DULServiceProvider or dul.is_alive():
        raise TypeError(f"expected the association's new DUL provider, found {dul!r}")
    wakeup = _Wakeup()
    work = threading.Event()
    assoc.__class__ = EventDrivenAssociation
    dul.__class__ = EventDrivenDUL
    cast(EventDrivenAssociation, assoc)._work = work
    cast(EventDrivenDUL, dul)._wakeup = wakeup
    # The DUL thread fills the acceptor's queues (wakes the acceptor); the
    # acceptor thread and others fill the DUL's (wake the DUL).
    dul.to_provider_queue = _NotifyingQueue(dul, wakeup.wake, dul.to_provider_queue)
    dul.event_queue = _NotifyingQueue(dul, wakeup.wake, dul.event_queue)
    dul.to_user_queue = _NotifyingQueue(assoc, work.set, dul.to_user_queue)
    assoc.dimse.msg_queue = _NotifyingQueue(assoc, work.set, assoc.dimse.msg_queue)
