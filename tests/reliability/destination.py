"""A result destination for fault tests: a pynetdicom Storage SCP that records arrivals.

The node's outbox sends RT Dose, SR and PDF objects by C-STORE; this SCP
answers Success and remembers, in arrival order, the SOP Instance UID and the
sha256 of the encoded dataset of every object, so a test can count what
arrived, in which order, and tell a resend of the same object (same UID,
same bytes) from a different object. It can be started late and stopped and
started again on the same port (a destination that is down, then back), and
answer each C-STORE only after ``answer_delay_s`` (a PACS busy filing), so
a delivery lasts long enough to be interrupted, or hold its answers until
released (:meth:`RecordingDestination.hold`), so a test knows an object is in
flight.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event

from theranode.service.deliver.sender import RESULT_SOP_CLASSES

logger = logging.getLogger(__name__)

SUCCESS = 0x0000


@dataclass(frozen=True)
class Arrival:
    """One C-STORE the destination accepted."""

    sop_instance_uid: str
    sop_class_uid: str
    sha256: str


@dataclass
class RecordingDestination:
    """A Storage SCP on ``127.0.0.1:port`` (AE title ``ae_title``) that records arrivals."""

    port: int
    ae_title: str = "PACS"
    answer_delay_s: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: Any = None
    _answering: threading.Event = field(default_factory=threading.Event)
    _held: int = 0

    def __post_init__(self) -> None:
        self._answering.set()

    def hold(self) -> None:
        """Keep every C-STORE from now on unanswered until :meth:`release`."""
        self._answering.clear()

    def release(self) -> None:
        self._answering.set()

    def held(self) -> int:
        """How many C-STOREs are waiting for their answer."""
        with self._lock:
            return self._held

    def _on_store(self, event: Event) -> int:
        data = event.encoded_dataset(include_meta=False)
        ds = event.dataset
        arrival = Arrival(str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                          hashlib.sha256(data).hexdigest())
        time.sleep(self.answer_delay_s)
        with self._lock:
            self._held += 1
        self._answering.wait(timeout=60)
        with self._lock:
            self._held -= 1
        with self._lock:
            self.arrivals.append(arrival)
        return SUCCESS

    def start(self) -> None:
        """Listen (again) on the port; arrivals recorded so far are kept."""
        ae = AE(ae_title=self.ae_title)
        for sop_class in RESULT_SOP_CLASSES:
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def uids(self) -> list[str]:
        """SOP Instance UIDs in arrival order (with any resends)."""
        with self._lock:
            return [a.sop_instance_uid for a in self.arrivals]

    def resent(self) -> dict[str, int]:
        """UIDs that arrived more than once, and how many times."""
        return {uid: n for uid, n in Counter(self.uids()).items() if n > 1}

    def different_objects_under_one_uid(self) -> list[str]:
        """UIDs that arrived with different bytes (a resend must be the same object)."""
        with self._lock:
            hashes: dict[str, set[str]] = {}
            for a in self.arrivals:
                hashes.setdefault(a.sop_instance_uid, set()).add(a.sha256)
        return [uid for uid, found in hashes.items() if len(found) > 1]
