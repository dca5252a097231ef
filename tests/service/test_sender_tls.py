"""Results to a destination over TLS: verified against the destination's CA, client
certificate when asked, and a certificate that does not verify is retried, never sent
in plaintext (issue #12 item 11)."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.events import Event

from tests.peers import free_port, require_tool, wait_for_port
from tests.reliability.certificates import Pki, make_pki
from tests.service.nodes import make_settings
from tests.service.test_outbox import START, Clock, result_files
from theranode.service.deliver.outbox import Outbox
from theranode.service.deliver.sender import ENCAPSULATED_PDF_STORAGE
from theranode.service.store import open_database
from theranode.service.store.jobs import JobStore
from theranode.service.store.outbox import OutboxStore

UIDS = [f"1.2.826.0.1.3680043.10.1.{i}" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_tool("openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second CA, which did not sign the destination's certificate."""
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@contextmanager
def tls_storage_scp(port: int, pki: Pki, require_client_cert: bool = False
                    ) -> Iterator[list[str]]:
    """A pynetdicom Storage SCP serving TLS only, with the PKI's server certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.load_verify_locations(cafile=pki.ca_cert)
        context.verify_mode = ssl.CERT_REQUIRED
    received: list[str] = []
    lock = threading.Lock()

    def on_store(event: Event) -> int:
        with lock:
            received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(ENCAPSULATED_PDF_STORAGE)
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield received
    finally:
        server.shutdown()


def tls_outbox(tmp_path: Path, port: int, clock: Clock, **tls: Any) -> Outbox:
    destination = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
                   **{k: str(v) for k, v in tls.items()}}
    settings = make_settings(tmp_path / "data", destinations=[destination],
                             outbox={"retry_base_s": 10.0, "retry_max_s": 60.0})
    jobs = JobStore(open_database(settings.data_dir / "theranode.db"))
    store = OutboxStore(jobs.db, jobs.lock)
    with jobs.transaction() as conn:
        store.add_objects(conn, 1, result_files(settings.data_dir, len(UIDS)), ["pacs"],
                          START.isoformat())
    return Outbox(store, settings, clock=clock)


def last_error(outbox: Outbox) -> str:
    problems = outbox.store.problems()
    assert problems and problems[-1]["state"] == "pending", problems
    return str(problems[-1]["last_error"])


def test_results_go_over_tls_to_a_destination_with_tls_ca(tmp_path: Path, pki: Pki) -> None:
    port, clock = free_port(), Clock()
    plain = tls_outbox(tmp_path / "plain", port, clock)
    secure = tls_outbox(tmp_path / "tls", port, clock, tls_ca=pki.ca_cert)
    with tls_storage_scp(port, pki) as received:
        plain.deliver_due()  # the SCP speaks TLS only: plaintext does not get through
        assert received == [] and plain.store.destination_due("pacs")[0] == 1
        secure.deliver_due()
    assert received == UIDS
    assert {r["state"]: r["n"] for r in secure.store.summary()} == {"sent": 3}


def test_a_destination_certificate_that_does_not_verify_is_retried_with_the_reason(
        tmp_path: Path, pki: Pki, other_pki: Pki) -> None:
    port, clock = free_port(), Clock()
    outbox = tls_outbox(tmp_path, port, clock, tls_ca=other_pki.ca_cert)
    with tls_storage_scp(port, pki) as received:
        outbox.deliver_due()
        assert outbox.store.destination_due("pacs")[0] == 1
        assert "certificate verify failed" in last_error(outbox)
        clock.now += timedelta(seconds=11)  # past the 10 s backoff: tried again, refused again
        outbox.deliver_due()
    assert received == []
    assert outbox.store.destination_due("pacs")[0] == 2
    assert [p.attempts for p in outbox.store.pending("pacs")] == [2, 0, 0]


def test_the_node_presents_its_client_certificate_when_the_destination_requires_one(
        tmp_path: Path, pki: Pki) -> None:
    port, clock = free_port(), Clock()
    with_cert = tls_outbox(tmp_path / "cert", port, clock, tls_ca=pki.ca_cert,
                           tls_cert=pki.client_cert, tls_key=pki.client_key)
    without = tls_outbox(tmp_path / "none", port, clock, tls_ca=pki.ca_cert)
    untrusted = tls_outbox(tmp_path / "rogue", port, clock, tls_ca=pki.ca_cert,
                           tls_cert=pki.rogue_client_cert, tls_key=pki.rogue_client_key)
    with tls_storage_scp(port, pki, require_client_cert=True) as received:
        without.deliver_due()
        untrusted.deliver_due()
        assert received == []
        with_cert.deliver_due()
    assert received == UIDS
    for refused, reason in ((without, "certificate required"), (untrusted, "unknown ca")):
        assert refused.store.destination_due("pacs")[0] == 1
        assert last_error(refused).startswith("TLS failed:") and reason in last_error(refused)


@pytest.mark.peer
def test_dcmtk_storescp_over_tls_receives_the_results(tmp_path: Path, pki: Pki) -> None:
    """Interoperability: dcmtk's storescp with its default BCP 195 profile, which also
    requires a client certificate (``-rc``, its default)."""
    port, clock, received = free_port(), Clock(), tmp_path / "received"
    received.mkdir()
    outbox = tls_outbox(tmp_path, port, clock, tls_ca=pki.ca_cert,
                        tls_cert=pki.client_cert, tls_key=pki.client_key)
    scp = subprocess.Popen(
        [require_tool("storescp"), "-aet", "PACS", "+tls", str(pki.server_key),
         str(pki.server_cert), "+cf", str(pki.ca_cert), "-od", str(received), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        outbox.deliver_due()
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    assert {r["state"]: r["n"] for r in outbox.store.summary()} == {"sent": 3}
    assert sorted(str(dcmread(f).SOPInstanceUID) for f in received.iterdir()) == UIDS
