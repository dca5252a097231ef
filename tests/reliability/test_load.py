"""Load: 8 parallel associations (CI: 8 × 150 small instances; the full run sends
20,000 with ``benchmarks/reliability.py``), and the association limit.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.peers import require_tool
from tests.reliability.load import LIMIT_REJECTION, probe_association, run_load
from tests.service.nodes import make_settings, running_node


@pytest.mark.peer
@pytest.mark.slow
def test_eight_parallel_senders_are_all_stored_and_indexed(tmp_path: Path):
    report = run_load(tmp_path, require_tool("storescu"), senders=8, per_sender=150)
    assert report.problems == [], "\n".join(report.problems[:20])
    assert report.indexed == report.instances == 1200
    assert report.instances_per_s > 20, f"{report.instances_per_s:.0f} instances/s"
    assert report.peak_rss_mb < 1024
    assert report.extra_peer_rejections.get(LIMIT_REJECTION, 0) >= 1, (
        "a ninth peer asked while all eight senders were connected and was rejected")


def test_association_limit_answers_an_extra_peer_with_a_transient_rejection(tmp_path: Path):
    settings = make_settings(tmp_path / "data", security={"max_associations": 2})
    with running_node(settings) as node:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", node.port, ae_title="THERANODE") for _ in range(2)]
        assert all(a.is_established for a in held)
        assert probe_association(node.port) == LIMIT_REJECTION
        held[0].release()
        for _ in range(50):  # the released association leaves the server's list shortly
            if probe_association(node.port) is None:
                break
        else:
            pytest.fail("a slot freed by a release is not offered again")
        held[1].release()


def test_bare_tcp_connections_do_not_take_association_slots(tmp_path: Path):
    """A TCP health check or port scan (connect, maybe close, never associate) must not
    lock modalities out: before the fix each such connection held a slot for the 30 s
    ACSE timeout, and a load run's own wait-for-port probe got 3 of 8 senders rejected."""
    settings = make_settings(tmp_path / "data", security={"max_associations": 2})
    with running_node(settings) as node:
        closed = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(2)]
        for connection in closed:
            connection.close()
        silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(3)]
        try:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(Verification)
            held = [ae.associate("127.0.0.1", node.port, ae_title="THERANODE") for _ in range(2)]
            assert all(a.is_established for a in held)
            assert probe_association(node.port) == LIMIT_REJECTION, "the limit still holds"
            for assoc in held:
                assoc.release()
        finally:
            for connection in silent:
                connection.close()
