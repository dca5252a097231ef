"""Running a theranode node inside a test, and sending to it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from tests.peers import free_port
from theranode.config.schema import Settings, settings_from_dict
from theranode.dicomio.headers import SOP_CLASS_KINDS
from theranode.service.app import Node
from theranode.service.deliver.requestor import SenderAE
from theranode.service.store.jobs import JobRecord, JobState, JobStore

# Files are sent as their raw bytes (not decoded and re-encoded), so a test
# can send exactly the malformed bytes it wants the node to see.
_config.STORE_SEND_CHUNKED_DATASET = True


def make_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    node = {"ae_title": "THERANODE", "bind": "127.0.0.1", "port": free_port(),
            "data_dir": str(data_dir)}
    node.update(sections.pop("node", {}))
    security = {"min_free_disk_mb": 0}
    security.update(sections.pop("security", {}))
    return settings_from_dict({"node": node, "security": security, **sections}, "test")


@contextmanager
def running_node(settings: Settings) -> Iterator[Node]:
    node = Node(settings)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def scu(ae_title: str = "TESTSCU") -> AE:
    ae = SenderAE(ae_title=ae_title)
    for sop_class in SOP_CLASS_KINDS:  # one context per transfer syntax: files go as they are
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def send(node_port: int, datasets: Iterable[Dataset | str | Path], *,
         ae_title: str = "TESTSCU", called: str = "THERANODE") -> list[int]:
    """C-STORE each dataset (or file) on one association; returns the statuses."""
    ae = scu(ae_title)
    assoc = ae.associate("127.0.0.1", node_port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError("association not established")
    statuses = []
    try:
        for item in datasets:
            status = assoc.send_c_store(item)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def replace_security(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, security=dataclasses.replace(settings.security, **changes))


def wait_job_ended(store: JobStore, job_id: int, timeout_s: float = 300.0) -> JobRecord:
    """The job once it is done or failed; the test fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.state in (JobState.DONE, JobState.FAILED):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} still {store.get(job_id).state.value} after {timeout_s:g} s")
