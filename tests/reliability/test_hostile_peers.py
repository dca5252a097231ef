"""The listener under hostile peers: each attack is bounded by a documented setting.

Idle TCP connections, TLS peers that never shake hands, denied hosts,
connections beyond ``max_connections``, partial and oversized
A-ASSOCIATE-RQs, idle associations holding every slot, an oversized C-STORE
and a full quarantine. Time limits are set to a second or two so that each
test takes seconds; the shipped defaults are in ``config/theranode.toml``.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack, closing
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification

from tests.peers import require_tool
from tests.reliability import hostile_peers as hostile
from tests.reliability.certificates import Pki, make_pki
from tests.reliability.test_access import a_ct, client_context, tls_associate, tls_security
from tests.service import factory
from tests.service.nodes import make_settings, running_node, scu, send
from theranode.config.schema import ConfigError, settings_from_dict
from theranode.service.receive.ingest import OUT_OF_RESOURCES, TRUNCATED
from theranode.service.receive.scp import GuardedServer, StorageSCP

INJECTION = datetime(2024, 5, 6, 9, 15)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_tool("openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


def listener_threads() -> int:
    """Threads this process runs for connections to the node (no sender runs here)."""
    return sum(
        1 for t in threading.enumerate()
        if "AcceptorThread" in t.name or isinstance(t, DULServiceProvider)
        or "process_request_thread" in t.name
    )


def wait_for(condition, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_an_idle_socket_does_not_block_a_tls_sender_and_is_closed_after_the_timeout(
        tmp_path: Path, pki: Pki, caplog):
    security = tls_security(pki, handshake_timeout_s=2.0)
    with running_node(make_settings(tmp_path / "data", security=security)) as node:
        # closed on failure too: an old listener would otherwise never stop
        with closing(hostile.connect(node.port)) as idle, \
                caplog.at_level(logging.WARNING, logger="theranode.service.receive.scp"):
            time.sleep(0.2)  # the listener has accepted it
            good = client_context(pki, pki.client_cert, pki.client_key)
            start = time.monotonic()
            try:  # a handshake of our own, with a timeout: pynetdicom's sender has none
                with good.wrap_socket(hostile.connect(node.port), server_hostname="localhost"):
                    pass
            except TimeoutError:
                pytest.fail("the idle socket held the sender's TLS handshake for 5 s")
            assert time.monotonic() - start < 3.0
            assoc = tls_associate(node.port, good)
            assert assoc.is_established
            assoc.release()
            closed_after = hostile.wait_closed(idle, within_s=4.0)
        assert closed_after is not None, "the idle socket outlived handshake_timeout_s"
        assert "no TLS handshake within handshake_timeout_s" in caplog.text
        assert "127.0.0.1" in caplog.text


def test_a_denied_host_is_closed_before_any_tls_handshake(tmp_path: Path, pki: Pki, caplog):
    security = tls_security(pki, allowed_hosts=["192.0.2.0/24"], handshake_timeout_s=30.0)
    with running_node(make_settings(tmp_path / "data", security=security)) as node:
        with caplog.at_level(logging.WARNING, logger="theranode.service.receive.scp"):
            with closing(hostile.connect(node.port)) as sock:  # sends no ClientHello
                assert hostile.wait_closed(sock, within_s=2.0) is not None
        assert "Refused connection from 127.0.0.1: host not in allowed_hosts" in caplog.text


def test_connections_beyond_the_limit_are_closed_at_once(tmp_path: Path, caplog):
    security = {"max_connections": 3, "max_associations": 3}
    with running_node(make_settings(tmp_path / "data", security=security)) as node:
        before = listener_threads()  # other tests' threads may linger
        ae = AE(ae_title="HOLDSCU")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", node.port, ae_title="THERANODE") for _ in range(3)]
        assert all(a.is_established for a in held)
        with caplog.at_level(logging.WARNING, logger="theranode.service.receive.scp"), \
                closing(hostile.connect(node.port)) as excess:
            assert hostile.wait_closed(excess, within_s=1.0) is not None
        assert "3 connections open, the limit (max_connections) is 3" in caplog.text
        for assoc in held:
            assoc.release()
        assert wait_for(lambda: listener_threads() <= before, within_s=3.0)


def test_idle_connections_at_the_limit_give_way_to_a_sender(tmp_path: Path, caplog):
    security = {"max_connections": 3, "max_associations": 2, "acse_timeout_s": 10.0}
    with running_node(make_settings(tmp_path / "data", security=security)) as node:
        before = listener_threads()  # other tests' threads may linger
        with ExitStack() as sockets:
            held = [sockets.enter_context(closing(hostile.connect(node.port))) for _ in range(3)]
            opened = time.monotonic()
            time.sleep(0.3)  # all three accepted
            excess = sockets.enter_context(closing(hostile.connect(node.port)))
            closed = hostile.wait_closed(excess, within_s=0.3)
            if time.monotonic() - opened < GuardedServer.EVICT_AFTER_S:
                assert closed is not None, "a flood of new connections evicts no one"
            time.sleep(GuardedServer.EVICT_AFTER_S)
            with caplog.at_level(logging.WARNING, logger="theranode.service.receive.scp"):
                asked = time.monotonic()
                assert send(node.port, [factory.ct("P1", INJECTION, frame="1.2.3")]) == [0]
                assert time.monotonic() - asked < 3.0
            assert "without an association request, for a new one" in caplog.text
            still_open = [hostile.wait_closed(s, within_s=0.1) is None for s in held]
            assert still_open.count(False) == 1, "only the oldest idle connection was closed"
        assert wait_for(lambda: listener_threads() <= before, within_s=3.0)


def test_a_partial_association_request_ends_its_thread_by_the_acse_timeout(tmp_path: Path):
    security = {"acse_timeout_s": 1.5}
    with running_node(make_settings(tmp_path / "data", security=security)) as node:
        before = listener_threads()  # other tests' threads may linger
        request = hostile.association_request("THERANODE", "SLOWSCU")
        with closing(hostile.connect(node.port)) as sock:
            sock.sendall(request[:40])  # the header and part of the body, then silence
            closed_after = hostile.wait_closed(sock, within_s=5.0)
            assert closed_after is not None and closed_after < 4.0
            assert wait_for(lambda: listener_threads() <= before, within_s=1.0), "thread outlived"
        # A slow drip does not extend the time limit either.
        with closing(hostile.connect(node.port)) as sock:
            start = time.monotonic()
            for byte in request[:60]:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                if hostile.wait_closed(sock, within_s=0.1) is not None:
                    break
            assert time.monotonic() - start < 4.0
        # The whole request in one go is served as usual.
        with closing(hostile.connect(node.port)) as sock:
            sock.sendall(request)
            answer = hostile.received_before_close(sock, within_s=0.5)
            assert answer[:1] == b"\x02", "A-ASSOCIATE-AC"


def test_an_oversized_association_request_is_refused_from_its_header(tmp_path: Path, caplog):
    security = {"max_association_request_kb": 64, "acse_timeout_s": 10.0}
    with running_node(make_settings(tmp_path / "data", security=security)) as node:
        before = listener_threads()  # other tests' threads may linger
        with closing(hostile.connect(node.port)) as sock:
            with caplog.at_level(logging.WARNING, logger="theranode.service.receive.scp"):
                sock.sendall(hostile.pdu_header(0x01, 256 * 1024 * 1024))
                answer = hostile.received_before_close(sock, within_s=1.0)
            assert answer[:1] == b"\x07", "an A-ABORT, at once"
            assert "A-ASSOCIATE-RQ declares 268435456 bytes" in caplog.text
            with pytest.raises(OSError):  # the body is never read: the node has closed
                for _ in range(64):
                    sock.sendall(bytes(1024 * 1024))
        assert wait_for(lambda: listener_threads() <= before, within_s=1.0)


def test_a_pdu_longer_than_the_offered_maximum_is_not_read(tmp_path: Path, caplog):
    with running_node(make_settings(tmp_path / "data")) as node:
        before = listener_threads()  # other tests' threads may linger
        with closing(hostile.connect(node.port)) as sock:
            sock.sendall(hostile.association_request("THERANODE", "BIGPDU"))
            sock.settimeout(5)
            assert sock.recv(1) == b"\x02", "A-ASSOCIATE-AC"
            with caplog.at_level(logging.WARNING, logger="theranode.service.receive.scp"):
                sock.sendall(hostile.pdu_header(0x04, 256 * 1024 * 1024))  # P-DATA-TF
                assert hostile.wait_closed(sock, within_s=2.0) is not None
            assert "more than the maximum length (1048576) it was given" in caplog.text
        assert wait_for(lambda: listener_threads() <= before, within_s=2.0)


def test_idle_associations_at_the_limit_give_way_to_a_sender(tmp_path: Path, caplog):
    reclaim_s = 3.0
    security = {"max_associations": 2, "reclaim_idle_after_s": reclaim_s}
    with running_node(make_settings(tmp_path / "data", security=security)) as node:
        idle_ae = AE(ae_title="IDLESCU")
        idle_ae.add_requested_context(Verification)
        idlers = [idle_ae.associate("127.0.0.1", node.port, ae_title="THERANODE")
                  for _ in range(2)]
        assert all(a.is_established for a in idlers)
        ct = factory.ct("P1", INJECTION, frame="1.2.3")
        with pytest.raises(ConnectionError):  # all slots held for less than reclaim_s
            send(node.port, [ct])
        start = time.monotonic()
        while time.monotonic() - start < reclaim_s:  # C-ECHO does not keep a slot
            assert all(a.send_c_echo().Status == 0x0000 for a in idlers)
            time.sleep(0.3)
        with caplog.at_level(logging.WARNING, logger="theranode.service.receive.scp"):
            asked = time.monotonic()
            assert send(node.port, [ct]) == [0]
            assert time.monotonic() - asked < 3.0
        assert "stored nothing for" in caplog.text
        assert wait_for(lambda: sum(a.is_established for a in idlers) == 1, within_s=2.0)
        for assoc in idlers:
            if assoc.is_established:
                assoc.release()


def test_an_association_stalled_in_a_pdu_gives_way_too(tmp_path: Path):
    security = {"max_associations": 1, "reclaim_idle_after_s": 1.0}
    with running_node(make_settings(tmp_path / "data", security=security)) as node, \
            closing(hostile.connect(node.port)) as sock:
        sock.sendall(hostile.association_request("THERANODE", "STALLER"))
        sock.settimeout(5)
        assert sock.recv(1) == b"\x02", "A-ASSOCIATE-AC"
        sock.sendall(hostile.pdu_header(0x04, 1000) + bytes(10))  # then silence, mid-PDU
        time.sleep(1.2)
        asked = time.monotonic()
        assert send(node.port, [factory.ct("P1", INJECTION, frame="1.2.3")]) == [0]
        assert time.monotonic() - asked < 3.0
        assert hostile.wait_closed(sock, within_s=2.0) is not None


def test_an_oversized_c_store_is_refused_and_not_kept(tmp_path: Path, caplog, monkeypatch):
    held: list[int] = []
    check_size = StorageSCP._check_size

    def spy(self, event, peer):  # what the node holds of the data set when it answers
        held.append(len(event.request.DataSet.getbuffer()))
        return check_size(self, event, peer)

    monkeypatch.setattr(StorageSCP, "_check_size", spy)
    with running_node(make_settings(tmp_path / "data", security={"max_instance_mb": 1})) as node:
        big = factory.ct("P1", INJECTION, frame="1.2.3")
        big.Rows = big.Columns = 2000  # 8 MB of pixels
        big.PixelData = np.zeros(2000 * 2000, dtype=np.uint16).tobytes()
        assoc = scu().associate("127.0.0.1", node.port, ae_title="THERANODE")
        assert assoc.is_established
        with caplog.at_level(logging.ERROR, logger="theranode.service.receive.scp"):
            status = assoc.send_c_store(big)
            small = assoc.send_c_store(factory.ct("P1", INJECTION, frame="1.2.3"))
        assoc.release()
        assert status.Status == OUT_OF_RESOURCES
        assert "of 8 MB exceeds max_instance_mb 1" in status.ErrorComment
        assert held[0] <= 2 * 1024 * 1024, "memory: the limit and one PDU at most"
        assert small.Status == 0x0000
        assert "larger than max_instance_mb (1 MB); not kept" in caplog.text
        assert node.index.counts()["instances"] == 1
        assert list(node.archive.quarantine.iterdir()) == []


def test_quarantine_beyond_its_quota_is_refused(tmp_path: Path, caplog):
    with running_node(make_settings(tmp_path / "data",
                                    security={"quarantine_quota_mb": 1})) as node:
        filler = node.archive.quarantine / "earlier.dcm"
        filler.write_bytes(bytes(1024 * 1024 - 200 * 1024))

        def truncated(rows: int) -> Path:
            ds: Dataset = factory.ct("P1", INJECTION, frame="1.2.3")
            ds.Rows = ds.Columns = rows
            ds.PixelData = np.zeros(rows * rows, dtype=np.uint16).tobytes()
            path = tmp_path / f"truncated{rows}.dcm"
            path.write_bytes(factory.encode(ds)[:-100])
            return path

        assert send(node.port, [truncated(8)]) == [TRUNCATED]  # within the quota: kept
        assert len(list(node.archive.quarantine.iterdir())) == 2
        assoc = scu().associate("127.0.0.1", node.port, ae_title="THERANODE")
        with caplog.at_level(logging.ERROR, logger="theranode.service.receive.ingest"):
            status = assoc.send_c_store(truncated(400))  # 320 kB more: beyond it
        good = assoc.send_c_store(a_ct(tmp_path)[0])
        assoc.release()
        assert status.Status == OUT_OF_RESOURCES
        assert status.ErrorComment.startswith("quarantine full (1 MB), not kept")
        assert "quarantine is at its quota" in caplog.text
        assert len(list(node.archive.quarantine.iterdir())) == 2, "nothing more kept"
        assert list(node.archive.incoming.iterdir()) == []
        assert good.Status == 0x0000, "storing itself is not limited by the quota"


def test_a_connection_limit_below_the_association_limit_is_a_configuration_error():
    with pytest.raises(ConfigError, match=r"max_connections \(4\) is below max_associations"):
        settings_from_dict({"security": {"max_connections": 4, "max_associations": 8}})


@pytest.mark.slow
def test_a_sender_stores_everything_while_every_hostile_peer_attacks(tmp_path: Path):
    report = hostile.run_hostile_peers(
        tmp_path, instances=10, idle_sockets=40, partial_requests=5, oversized_requests=5,
        idle_associations=8, max_wait_s=30.0,
        security={"reclaim_idle_after_s": 2.0, "acse_timeout_s": 5.0},
    )
    assert report.problems == []
    assert report.stored == 10
    assert report.sender_wait_s < 2.0 + 5.0, "reclaim_idle_after_s and a retry"
    assert report.node_threads_max < 80, "threads bounded by max_connections"
