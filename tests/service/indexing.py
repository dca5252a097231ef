"""Filing instances as a node does, without the network: index rows alone, or two
receptions at the same moment (two associations, or two nodes on one database)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from pydicom.uid import ExplicitVRLittleEndian

from tests.service import factory
from tests.service.keys import TEST_KEYER
from theranode.dicomio.headers import instance_header
from theranode.service.receive.ingest import Ingest, Outcome, Peer
from theranode.service.store.index import IndexStore


def index_time_point(index: IndexStore, patient_id: str, injection: datetime,
                     frame: str) -> str:
    """Index a patient's SPECT/CT time point 24 h after ``injection``; returns its key."""
    acquired = injection + timedelta(hours=24)
    key = ""
    for n, ds in enumerate([factory.nm(patient_id, injection, acquired, frame=frame),
                            factory.ct(patient_id, acquired, frame=frame)]):
        header = instance_header(ds, TEST_KEYER)
        key = header.patient_key
        index.add_instance(header, path=f"archive/{patient_id}-{n}.dcm", sha256=f"{n:064x}",
                           size=1000 + n, transfer_syntax="1.2.840.10008.1.2.1",
                           received=acquired, calling_ae="SCANNER", peer="10.0.0.5")
    return key


def receive_at_once(ingests: tuple[Ingest, Ingest], objects: tuple[bytes, bytes]
                    ) -> list[Outcome]:
    """Receive ``objects[n]`` through ``ingests[n]`` (as CTs) on two threads released together."""
    start = threading.Barrier(2)
    outcomes: list[Outcome | None] = [None, None]

    def store(n: int) -> None:
        start.wait()
        outcomes[n] = ingests[n].receive(objects[n], Peer(f"SCU{n}", "127.0.0.1"),
                                         ExplicitVRLittleEndian, factory.CT)

    threads = [threading.Thread(target=store, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]
