"""The Storage SCP over real associations on loopback (pynetdicom as the sender)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.service import factory
from tests.service.nodes import make_settings, running_node, scu, send
from tests.waiting import wait_for
from theranode.service.receive.ingest import (
    MISSING_ATTRIBUTE,
    OUT_OF_RESOURCES,
    SOP_CLASS_MISMATCH,
    TRUNCATED,
)

INJECTION = datetime(2024, 5, 6, 9, 15)


@pytest.fixture
def node(tmp_path: Path):
    with running_node(make_settings(tmp_path / "data")) as running:
        yield running


def write(tmp_path: Path, ds, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(factory.encode(ds))
    return path


def test_echo_succeeds(node):
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="THERANODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_time_point_is_stored_indexed_and_grouped(node, tmp_path):
    nm = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=24), frame="1.2.3.24")
    cts = [factory.ct("P1", INJECTION + timedelta(hours=24), frame="1.2.3.24",
                      series="1.2.3.4.5") for _ in range(3)]
    rs = factory.rtstruct("P1", INJECTION, referenced_frame="1.2.3.24")
    assert send(node.port, [nm, *cts, rs]) == [0, 0, 0, 0, 0]
    node.regrouper.wait_idle()
    counts = node.index.counts()
    assert (counts["patients"], counts["series"], counts["instances"]) == (1, 3, 5)
    archived = list((node.archive.archive).rglob("*.dcm"))
    assert len(archived) == 5
    assert all("P1" not in str(p) for p in archived), "paths never carry the PatientID"
    rows = node.index.grouping_of_patient(node.index.patient_keys()[0])
    assert {(r["role"], r["cycle"], r["time_point_h"], r["state"]) for r in rows} == {
        ("SPECT", 1, 24.0, "grouped"), ("CT", 1, 24.0, "grouped"),
        ("RTSTRUCT", 1, 24.0, "grouped")}


def test_identical_duplicate_is_success_without_a_new_copy(node):
    nm = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
    assert send(node.port, [nm, nm]) == [0, 0]
    assert node.index.counts()["instances"] == 1
    assert len(list(node.archive.archive.rglob("*.dcm"))) == 1


def test_conflicting_duplicate_is_kept_aside_and_never_overwrites(node):
    nm = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
    assert send(node.port, [nm]) == [0]
    original = next(node.archive.archive.rglob("*.dcm")).read_bytes()
    nm.SeriesDescription = "changed"
    assert send(node.port, [nm]) == [0]
    assert next(node.archive.archive.rglob("*.dcm")).read_bytes() == original
    assert node.index.counts()["conflicts"] == 1
    assert len(list(node.archive.conflicts.glob("*.dcm"))) == 1


def test_missing_sop_instance_uid_fails_and_is_quarantined(node, tmp_path, caplog):
    nm = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
    path = write(tmp_path, nm, "x.dcm")
    nm_bytes = path.read_bytes()
    # remove SOPInstanceUID from the data set but keep it in the file meta
    nm2 = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
    del nm2.SOPInstanceUID
    nm2.file_meta.MediaStorageSOPInstanceUID = nm.SOPInstanceUID
    path.write_bytes(factory.encode(nm2))
    assert nm_bytes != path.read_bytes()
    with caplog.at_level(logging.WARNING):
        assert send(node.port, [path]) == [MISSING_ATTRIBUTE]
    assert "SOPInstanceUID is missing" in caplog.text
    assert node.index.counts()["instances"] == 0
    assert len(list(node.archive.quarantine.glob("*.dcm"))) == 1
    assert node.index.recent_quarantine()[0]["status"] == MISSING_ATTRIBUTE


def test_truncated_object_fails_and_is_quarantined(node, tmp_path):
    nm = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
    data = factory.encode(nm)
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[:-100])
    assert send(node.port, [path]) == [TRUNCATED]
    assert node.index.counts()["instances"] == 0
    assert node.index.counts()["quarantine"] == 1


def test_data_set_of_another_sop_class_than_its_context_fails(node, tmp_path):
    data = factory.encode(factory.ct("P1", INJECTION, frame="1.2.3"))
    # The file meta (which picks the presentation context) says NM; the data set says CT.
    ct_uid, nm_uid = factory.CT.encode() + b"\0", factory.NM.encode()
    assert len(ct_uid) == len(nm_uid)
    path = tmp_path / "ct.dcm"
    path.write_bytes(data.replace(ct_uid, nm_uid, 1))
    assert send(node.port, [path]) == [SOP_CLASS_MISMATCH]


def test_sop_class_not_stored_is_not_negotiated(node):
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(factory.SECONDARY_CAPTURE)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="THERANODE")
    assert not assoc.is_established, "no context accepted, so the SCU gives up"
    assert node.index.counts()["instances"] == 0


def test_nm_without_injection_is_stored_but_reported_ungroupable(node):
    nm = factory.nm("P1", None, INJECTION + timedelta(hours=4))
    assert send(node.port, [nm]) == [0]
    node.regrouper.wait_idle()
    (row,) = node.index.grouping_of_patient(node.index.patient_keys()[0])
    assert row["state"] == "ungrouped" and "injection" in row["note"]


def test_rtstruct_is_held_until_its_frame_of_reference_arrives(node):
    rs = factory.rtstruct("P1", INJECTION, referenced_frame="1.2.3.4")
    nm = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4), frame="1.2.3.4")
    assert send(node.port, [rs, nm]) == [0, 0]
    node.regrouper.wait_idle()
    key = node.index.patient_keys()[0]
    state = {r["role"]: r["state"] for r in node.index.grouping_of_patient(key)}
    assert state["RTSTRUCT"] == "held"
    ct = factory.ct("P1", INJECTION + timedelta(hours=4), frame="1.2.3.4")
    assert send(node.port, [ct]) == [0]
    node.regrouper.wait_idle()
    state = {r["role"]: r["state"] for r in node.index.grouping_of_patient(key)}
    assert state == {"SPECT": "grouped", "CT": "grouped", "RTSTRUCT": "grouped"}


def test_disk_below_limit_answers_out_of_resources(tmp_path):
    settings = make_settings(tmp_path / "data", security={"min_free_disk_mb": 10**9})
    with running_node(settings) as node:
        nm = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
        assert send(node.port, [nm]) == [OUT_OF_RESOURCES]
        assert node.index.counts()["instances"] == 0
        assert list(node.archive.archive.rglob("*.dcm")) == []


def test_unknown_calling_ae_title_is_rejected_and_logged_as_such(tmp_path, caplog):
    settings = make_settings(tmp_path / "data",
                             security={"allowed_calling_ae_titles": ["GOODSCU"]})
    with running_node(settings) as node, caplog.at_level(logging.WARNING):
        with pytest.raises(ConnectionError):
            send(node.port, [], ae_title="BADSCU")
        assert send(node.port, [], ae_title="GOODSCU") == []
    assert ("Association rejected from BADSCU (127.0.0.1): calling AE title 'BADSCU' is not "
            "in security.allowed_calling_ae_titles (GOODSCU)") in caplog.text


def test_host_not_allowed_is_refused(tmp_path):
    settings = make_settings(tmp_path / "data", security={"allowed_hosts": ["10.9.9.0/24"]})
    with running_node(settings) as node, pytest.raises(ConnectionError):
        send(node.port, [])


def test_log_has_association_and_series_lines_but_no_patient_name(node, caplog):
    nm = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
    series_line = f"Series {nm.SeriesInstanceUID} (NM): 1 instance(s) stored"
    with caplog.at_level(logging.INFO):
        send(node.port, [nm])
        # The node logs the series when its side of the release is done, which
        # can come a moment after the sender has its release reply.
        wait_for(lambda: series_line in caplog.text, 10, "the series line", poll_s=0.02)
        node.regrouper.wait_idle()
    assert "Association accepted from TESTSCU" in caplog.text
    assert "Test^Patient" not in caplog.text
    assert "P1" not in caplog.text, "the PatientID is not logged either"


def test_node_keeps_serving_after_every_kind_of_bad_input(node, tmp_path):
    good = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(factory.encode(good)[:-100])
    no_uid = factory.nm("P1", INJECTION, INJECTION + timedelta(hours=4))
    no_uid_path = tmp_path / "no_uid.dcm"
    del no_uid.SOPInstanceUID
    no_uid.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    no_uid_path.write_bytes(factory.encode(no_uid))
    no_injection = factory.nm("P1", None, INJECTION)
    held = factory.rtstruct("P1", INJECTION, referenced_frame="9.9.9")
    statuses = send(node.port, [truncated, no_uid_path, no_injection, held, good])
    assert statuses == [TRUNCATED, MISSING_ATTRIBUTE, 0, 0, 0]
    assert send(node.port, [factory.ct("P1", INJECTION, frame="1.2")]) == [0]
    assert node.index.counts()["instances"] == 4


def test_association_calling_another_ae_title_is_rejected_and_logged_as_such(node, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(ConnectionError):
        send(node.port, [], called="NOTTHENODE")
    assert ("Association rejected from TESTSCU (127.0.0.1): it called AE title 'NOTTHENODE', "
            "and this node is 'THERANODE'") in caplog.text
    assert "slots are in use" not in caplog.text


def test_association_over_the_limit_is_rejected_and_logged_as_such(tmp_path, caplog):
    settings = make_settings(tmp_path / "data", security={"max_associations": 1,
                                                          "reclaim_idle_after_s": 3600.0})
    with running_node(settings) as node, caplog.at_level(logging.WARNING):
        holder = scu("HOLDER").associate("127.0.0.1", node.port, ae_title="THERANODE")
        assert holder.is_established
        try:
            with pytest.raises(ConnectionError):
                send(node.port, [])
        finally:
            holder.release()
    assert ("Association rejected from TESTSCU (127.0.0.1): all 1 association slots are in "
            "use") in caplog.text


@pytest.mark.parametrize("sop_instance_uid", ["1.2.826.0.1.3680043.8.498.1", "1.2.3.45"])
def test_received_bytes_are_framed_as_pynetdicom_frames_them(tmp_path, sop_instance_uid):
    # Archived digests are of these bytes: an identical resend must keep matching.
    from pynetdicom import ALL_TRANSFER_SYNTAXES, evt

    from theranode.service.receive.scp import received_file

    seen: list[tuple[bytes, bytes]] = []

    def on_store(event):
        seen.append((received_file(event), event.encoded_dataset(include_meta=True)))
        return 0x0000

    scp = AE(ae_title="FRAMES")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.2", ALL_TRANSFER_SYNTAXES)
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        ct = factory.ct("P1", INJECTION + timedelta(hours=24), frame="1.2.3.24")
        ct.SOPInstanceUID = sop_instance_uid
        assert send(server.server_address[1], [ct], called="FRAMES") == [0]
    finally:
        server.shutdown()
    ours, pynetdicoms = seen[0]
    assert ours == pynetdicoms


def test_the_listener_socket_serves_the_request_it_read_first_and_stays_one_socket():
    # pynetdicom makes the association's socket; GuardedServer, which has
    # already read the A-ASSOCIATE-RQ, turns that same object into one that
    # serves those bytes first: a second socket would announce a second connection.
    import socket

    from pynetdicom.association import Association
    from pynetdicom.transport import AssociationSocket

    from theranode.service.receive.scp import _PrefixedSocket

    ours, peer = socket.socketpair()
    try:
        assoc = Association(AE(), "acceptor")
        sock = AssociationSocket(assoc, client_socket=ours)
        assoc.set_socket(sock)
        _PrefixedSocket.adopt(assoc.dul.socket, b"\x01\x00read")
        assert assoc.dul.socket is sock and isinstance(sock, _PrefixedSocket)
        assert assoc.dul.event_queue.qsize() == 1  # one "connection open" (Evt5)
        assert sock.ready
        peer.sendall(b"sent")
        assert sock.recv(4) == b"\x01\x00re"
        assert sock.recv(4) == b"adse"
        assert sock.recv(2) == b"nt"
        with pytest.raises(TypeError):
            _PrefixedSocket.adopt(None, b"")
    finally:
        ours.close()
        peer.close()
