"""Two nodes filing into one archive folder and one database (docs/scale-out.md).

Each node is an :class:`Ingest` with its own :class:`Archive` (its own ``incoming/<name>``)
and its own database connection; the folder and the database are shared. A sender that
retries through the other node, or two senders with one SOP Instance UID, must leave one
indexed file whose bytes are the indexed hash, never one node's bytes under the other's row.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.service import factory
from tests.service.indexing import receive_at_once
from tests.service.keys import TEST_KEYER
from theranode.service.receive.archive import Archive, sha256_hex
from theranode.service.receive.ingest import SUCCESS, Ingest, Outcome, Peer
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

WHEN = datetime(2024, 5, 7, 9, 0)
TRIES = 15


def _nodes(data_dir: Path, database_url: str) -> tuple[Ingest, Ingest]:
    return tuple(  # type: ignore[return-value]
        Ingest(Archive(data_dir, node_name=name), IndexStore(open_database(database_url)),
               TEST_KEYER)
        for name in ("node-a", "node-b")
    )


#: One study and series for every instance here: the archive path follows the UIDs.
STUDY, SERIES = factory.generate_uid(), factory.generate_uid()


def _ct(uid: str, comment: str = "") -> bytes:
    """A CT with SOP Instance UID ``uid``; another ``comment`` gives other bytes."""
    ds = factory.ct("SHARED", WHEN, frame="1.2.3", study=STUDY, series=SERIES)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.ImageComments = comment
    return factory.encode(ds)


def test_one_instance_stored_through_both_nodes_at_once_is_filed_once(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    nodes = _nodes(data_dir, database_url)
    index = nodes[0].index
    for _ in range(TRIES):
        data = _ct(factory.generate_uid())
        outcomes = receive_at_once(nodes, (data, data))
        assert [o.status for o in outcomes] == [SUCCESS, SUCCESS]
        assert sorted(o.duplicate for o in outcomes) == [False, True]
    rows = index.db.query("select path, sha256 from instances")
    assert len(rows) == TRIES
    for row in rows:
        assert sha256_hex((data_dir / row["path"]).read_bytes()) == row["sha256"]
    assert index.counts()["conflicts"] == 0
    assert not list((data_dir / "incoming").rglob("*.tmp"))


def test_two_objects_under_one_uid_at_once_keep_the_indexed_bytes_in_the_archive(
    tmp_path: Path, database_url: str
) -> None:
    """The other object goes to conflicts/, as on one node: never over the indexed file."""
    data_dir = tmp_path / "data"
    nodes = _nodes(data_dir, database_url)
    index = nodes[0].index
    for _ in range(TRIES):
        uid = factory.generate_uid()
        first, second = _ct(uid, "first"), _ct(uid, "second")
        outcomes = receive_at_once(nodes, (first, second))
        assert [o.status for o in outcomes] == [SUCCESS, SUCCESS]
        (row,) = index.db.query("select path, sha256 from instances where "
                                "sop_instance_uid = ?", [uid])
        archived = (data_dir / row["path"]).read_bytes()
        assert sha256_hex(archived) == row["sha256"]
        assert archived in (first, second)
        (aside,) = index.db.query("select path, sha256 from conflicts where "
                                  "sop_instance_uid = ?", [uid])
        kept = (data_dir / aside["path"]).read_bytes()
        assert {archived, kept} == {first, second}


def test_a_start_up_reconciliation_files_another_nodes_unindexed_file_without_losing_it(
    tmp_path: Path, database_url: str
) -> None:
    """Node B restarts while node A has placed a file and not yet written its row."""
    data_dir = tmp_path / "data"
    node_a, node_b = _nodes(data_dir, database_url)
    data = _ct(factory.generate_uid())
    placing = node_a.archive.store_instance
    outcome_b: list[Outcome] = []

    def place_then_let_b_reconcile(staged, header, sha256):  # type: ignore[no-untyped-def]
        stored = placing(staged, header, sha256)
        outcome_b.append(node_b.reindex(stored.path))
        return stored

    node_a.archive.store_instance = place_then_let_b_reconcile  # type: ignore[method-assign]
    outcome_a = node_a.receive(data, Peer("SCU", "127.0.0.1"), ExplicitVRLittleEndian, factory.CT)
    assert outcome_b[0].status == SUCCESS and not outcome_b[0].duplicate
    assert (outcome_a.status, outcome_a.duplicate) == (SUCCESS, True)
    (row,) = node_a.index.db.query("select path, sha256 from instances")
    assert (data_dir / row["path"]).read_bytes() == data


def test_a_node_starting_removes_only_its_own_half_written_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node_a, node_b = Archive(data_dir, node_name="node-a"), Archive(data_dir, node_name="node-b")
    in_flight = node_a.stage(b"bytes of an association node A is receiving")
    left_by_crash = node_b.stage(b"bytes node B was receiving when it was killed")
    assert node_b.clean_incoming() == 1
    assert in_flight.path.exists() and not left_by_crash.path.exists()


@pytest.mark.parametrize("name", ["node-a", None])
def test_a_placed_file_is_never_replaced(tmp_path: Path, name: str | None) -> None:
    archive = Archive(tmp_path / "data", node_name=name)
    header_bytes = _ct(factory.generate_uid())
    ingest = Ingest(archive, IndexStore(open_database()), TEST_KEYER)
    outcome = ingest.receive(header_bytes, Peer("SCU", "127.0.0.1"), ExplicitVRLittleEndian,
                             factory.CT)
    assert outcome.header is not None
    path = archive.instance_path(outcome.header)
    from theranode.service.receive.archive import AlreadyPlaced

    with pytest.raises(AlreadyPlaced) as placed:
        archive.store_instance(archive.stage(b"other bytes"), outcome.header, "0" * 64)
    assert placed.value.sha256 == sha256_hex(header_bytes)
    assert path.read_bytes() == header_bytes


def test_without_hard_links_an_instance_is_renamed_into_place_when_its_name_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SMB or FUSE mount answers link(2) with EPERM: one node still files as before."""
    import errno
    import os

    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    archive = Archive(tmp_path / "data")
    ingest = Ingest(archive, IndexStore(open_database()), TEST_KEYER)
    data = _ct(factory.generate_uid())
    first = ingest.receive(data, Peer("SCU", "127.0.0.1"), ExplicitVRLittleEndian, factory.CT)
    again = ingest.receive(data, Peer("SCU", "127.0.0.1"), ExplicitVRLittleEndian, factory.CT)
    assert (first.status, first.duplicate, again.duplicate) == (SUCCESS, False, True)
    assert first.header is not None
    assert archive.instance_path(first.header).read_bytes() == data
    assert not list(archive.incoming.glob("*.tmp"))
