"""The outbox: every result object to every destination, in order, exactly once.

A background thread delivers, per configured destination, the pending
objects in the order the jobs produced them (:mod:`theranode.service.store.outbox`):

* success or warning → ``sent`` (never sent again);
* failure status → ``refused``: the status and comment are logged and kept,
  the file stays in the results folder, delivery moves on to the next object;
* destination unreachable → the destination waits
  ``min(retry_max_s, retry_base_s · 2^(failures-1))`` before the next attempt;
  the failure count and the next attempt time are in the database, so the
  backoff survives a restart.

An object is marked sent only after the destination's success status; a
crash between that status and the commit re-sends the same object (same SOP
Instance UID and bytes) once, which a PACS files as the same instance.

:meth:`Outbox.stop` (a shutdown of the node) lets the object in flight be
answered and recorded, then releases the association: the objects not yet
sent stay ``pending`` and go out, in order, after the restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from theranode.config.schema import Settings
from theranode.service.clock import utc_now
from theranode.service.deliver.sender import Sender, SendResult, SendState, sender_for
from theranode.service.store.outbox import DeliveryState, OutboxStore, PendingObject

logger = logging.getLogger(__name__)

BATCH = 50


class _Stopping(Exception):
    """Raised from a sender's result callback to end a batch when the outbox stops."""


def backoff_s(failures: int, base_s: float, max_s: float) -> float:
    """Delay after ``failures`` consecutive failures: base · 2^(failures−1), capped."""
    return float(min(max_s, base_s * 2 ** max(0, failures - 1)))


class Outbox:
    """Delivers pending result objects to every destination."""

    def __init__(
        self,
        store: OutboxStore,
        settings: Settings,
        senders: list[Sender] | None = None,
        clock: Callable[[], datetime] = utc_now,
        leadership: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        #: True while this process delivers for the whole database: nodes sharing one
        #: PostgreSQL database deliver through one of them
        #: (:class:`~theranode.service.store.database.Leadership`).
        self.leadership = leadership
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.senders = senders if senders is not None else [
            sender_for(d, settings.node.ae_title) for d in settings.destinations
        ]
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        added = self.store.add_destination_backlog([s.name for s in self.senders],
                                                   self.clock().isoformat())
        if added:
            logger.info("Outbox: %d earlier object(s) queued for newly configured destinations",
                        added)
        self._thread.start()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def begin_stop(self) -> None:
        """Send nothing after the object in flight (a shutdown has begun)."""
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        self.begin_stop()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.leadership():
                self.deliver_due()
            self._wake.wait(1.0)
            self._wake.clear()

    def deliver_due(self) -> None:
        """One pass over every destination whose retry time has come."""
        for sender in self.senders:
            if self._stop.is_set():
                return
            try:
                self._deliver(sender)
            except Exception:
                logger.exception("Outbox: delivery to %s failed unexpectedly", sender.name)

    def _due(self, name: str) -> bool:
        _, next_at = self.store.destination_due(name)
        return next_at is None or datetime.fromisoformat(next_at) <= self.clock()

    def _deliver(self, sender: Sender) -> None:
        while self._due(sender.name) and not self._stop.is_set():
            pending = self.store.pending(sender.name, BATCH)
            if not pending:
                return
            by_path = {self.data_dir / p.path: p for p in pending}

            def record(result: SendResult) -> None:  # committed before the next object goes
                self._record(sender.name, by_path[result.path], result.state, result.status,
                             result.detail)
                if self._stop.is_set():
                    raise _Stopping  # the sender releases its association on the way out

            try:
                results = sender.send(list(by_path), on_result=record)
            except _Stopping:
                logger.info("Outbox: stopping; the objects still pending for %s go out after "
                            "the restart", sender.name)
                return
            if not results or results[-1].state is SendState.UNREACHABLE:
                self._failed(sender.name, results[-1].detail if results else "nothing sent")
                return
            self.store.destination_reached(sender.name)

    def _record(self, name: str, obj: PendingObject, state: SendState, status: int | None,
                detail: str) -> None:
        now = self.clock().isoformat()
        if state is SendState.SENT:
            self.store.record(obj.object_id, name, DeliveryState.SENT, now, status, detail)
            logger.info("Outbox: %s %s delivered to %s (status 0x%04X)", obj.modality,
                        obj.sop_instance_uid, name, status or 0)
        elif state is SendState.REFUSED:
            self.store.record(obj.object_id, name, DeliveryState.REFUSED, now, status, detail)
            logger.error("Outbox: %s refused %s %s with status 0x%04X (%s); the object is kept "
                         "in %s", name, obj.modality, obj.sop_instance_uid, status or 0,
                         detail or "no comment", Path(obj.path).parent)
        else:
            self.store.record(obj.object_id, name, DeliveryState.PENDING, now, status, detail)

    def _failed(self, name: str, detail: str) -> None:
        failures, _ = self.store.destination_due(name)
        delay = backoff_s(failures + 1, self.settings.outbox.retry_base_s,
                          self.settings.outbox.retry_max_s)
        next_at = self.clock() + timedelta(seconds=delay)
        count = self.store.destination_failed(name, next_at.isoformat())
        logger.warning("Outbox: destination %s unreachable (%s); attempt %d failed, next in "
                       "%.0f s", name, detail, count, delay)
