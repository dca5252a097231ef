"""Outbox: every object to every destination in order, exactly once, through outages
and restarts, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event

from tests.peers import free_port
from tests.service.nodes import make_settings
from theranode.dicomio.part10 import encode, file_meta
from theranode.service.deliver.outbox import Outbox, backoff_s
from theranode.service.deliver.sender import ENCAPSULATED_PDF_STORAGE, SendState, classify_status
from theranode.service.jobs.spec import ResultObject
from theranode.service.store import open_database
from theranode.service.store.jobs import JobStore
from theranode.service.store.outbox import OutboxStore

START = datetime(2024, 5, 1, 10, 0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def storage_scp(port: int, refuse: set[str] = frozenset()) -> Iterator[list[str]]:
    """A pynetdicom Storage SCP on ``port`` recording every SOP Instance UID it stores."""
    received: list[str] = []
    lock = threading.Lock()

    def on_store(event: Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in refuse:
            return 0xA900  # dataset does not match SOP class
        with lock:
            received.append(uid)
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(ENCAPSULATED_PDF_STORAGE)
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield received
    finally:
        server.shutdown()


def result_files(data_dir: Path, n: int) -> list[ResultObject]:
    objects = []
    folder = data_dir / "results" / "job-1"
    folder.mkdir(parents=True)
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{i + 1}"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.2"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.3"
        ds.Modality = "DOC"
        ds.file_meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
        path = folder / f"DOC{i}.dcm"
        path.write_bytes(encode(ds))
        objects.append(ResultObject(f"results/job-1/DOC{i}.dcm", ds.SOPClassUID,
                                    ds.SOPInstanceUID, ds.SeriesInstanceUID, "DOC", ""))
    return objects


def outbox_for(tmp_path: Path, url: str, port: int, clock: Clock, n_objects: int = 0) -> Outbox:
    """A node's outbox on the database at ``url``, with ``n_objects`` results of job 1."""
    settings = make_settings(
        tmp_path / "data", outbox={"retry_base_s": 10.0, "retry_max_s": 60.0},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        database={"url": url})
    jobs = JobStore(open_database(settings.database_url))
    store = OutboxStore(jobs.db, jobs.lock)
    if n_objects:
        objects = result_files(settings.data_dir, n_objects)
        with jobs.transaction() as conn:
            store.add_objects(conn, 1, objects, ["pacs"], START.isoformat())
    return Outbox(store, settings, clock=clock)


def test_destination_down_then_back_receives_every_object_exactly_once(
    tmp_path: Path, database_url: str
) -> None:
    port, clock = free_port(), Clock()
    outbox = outbox_for(tmp_path, database_url, port, clock, n_objects=5)
    outbox.deliver_due()  # nobody listens
    assert outbox.store.destination_due("pacs")[0] == 1
    assert [p.attempts for p in outbox.store.pending("pacs")] == [1, 0, 0, 0, 0]

    with storage_scp(port) as received:
        outbox.deliver_due()  # still backing off: nothing is tried
        assert received == [] and outbox.store.destination_due("pacs")[0] == 1
        # the node restarts: the backoff was persisted
        clock.now += timedelta(seconds=5)
        restarted = outbox_for(tmp_path, database_url, port, clock)
        restarted.deliver_due()
        assert received == []
        clock.now += timedelta(seconds=6)  # 11 s > 10 s base delay
        restarted.deliver_due()
        restarted.deliver_due()
    assert received == [f"1.2.826.0.1.3680043.10.1.{i}" for i in range(1, 6)]  # in order, once
    assert restarted.store.pending("pacs") == []
    assert restarted.store.destination_due("pacs") == (0, None)
    assert {r["state"]: r["n"] for r in restarted.store.summary()} == {"sent": 5}


def test_refused_object_is_kept_with_its_status_and_the_rest_is_delivered(
    tmp_path: Path, database_url: str
) -> None:
    port, clock = free_port(), Clock()
    outbox = outbox_for(tmp_path, database_url, port, clock, n_objects=3)
    refused_uid = "1.2.826.0.1.3680043.10.1.2"
    with storage_scp(port, refuse={refused_uid}) as received:
        outbox.deliver_due()
        outbox.deliver_due()
    assert received == ["1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.3"]
    problems = outbox.store.problems()
    assert len(problems) == 1
    assert problems[0]["state"] == "refused" and problems[0]["last_status"] == 0xA900
    assert (outbox.data_dir / "results" / "job-1" / "DOC1.dcm").is_file()


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert [backoff_s(n, 10, 60) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


@pytest.mark.parametrize(("status", "state"), [
    (0x0000, SendState.SENT), (0xB000, SendState.SENT), (0x0001, SendState.SENT),
    (0xA700, SendState.REFUSED), (0xA900, SendState.REFUSED), (0xC000, SendState.REFUSED),
])
def test_statuses_are_classified_as_ps3_4_says(status: int, state: SendState) -> None:
    assert classify_status(status) is state
