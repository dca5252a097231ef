"""Start-up reconciliation files orphans through the checks of a C-STORE and never raises.

An orphan is an archive file without an index row: a kill between placing a
file and committing its row, or a committed row rolled back by a power cut.
Each orphan ends where the same bytes arriving by C-STORE would: indexed
where it lies, in ``conflicts/`` (its SOP Instance UID is indexed with other
bytes), in ``quarantine/`` (not decodable, or its series UID belongs to
another patient), or removed as a copy of an archived instance. Before, an
orphan whose UID had been stored again in another series raised
IntegrityError on every start: the node never started again.

The node's index is an SQLite file or a PostgreSQL database: every test runs on both.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.service import factory
from tests.service.keys import TEST_KEYER, use_test_secret
from tests.service.nodes import make_settings, running_node
from theranode.dicomio.headers import instance_header
from theranode.dicomio.integrity import decode
from theranode.service.receive.archive import Archive, sha256_hex
from theranode.service.receive.ingest import MISSING_ATTRIBUTE, SUCCESS, UNDECODABLE, Ingest, Peer
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

WHEN = datetime(2024, 5, 7, 9, 0)
PEER = Peer("SCU", "127.0.0.1")


def _orphan(archive: Archive, data: bytes) -> Path:
    """Place ``data`` at its archive path with no index row (as a kill before the commit)."""
    path = archive.instance_path(instance_header(decode(data), TEST_KEYER))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_node_starts_and_every_orphan_ends_where_documented(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
):
    settings = make_settings(tmp_path / "data", database={"url": database_url})
    data_dir = settings.data_dir
    use_test_secret(data_dir)  # the orphans were filed by this node, with its secret
    archive = Archive(data_dir, min_free_disk_mb=0)
    index = IndexStore(open_database(database_url))
    ingest = Ingest(archive, index, TEST_KEYER)

    # 1. The case: UID u was in series S1 when the kill came (orphan), then the
    #    sender stored u again in series S2, which was indexed.
    first = factory.ct("PAT-A", WHEN, frame="1.2.3", series=factory.generate_uid())
    again = factory.ct("PAT-A", WHEN, frame="1.2.3", series=factory.generate_uid())
    again.SOPInstanceUID = again.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    stored = factory.encode(again)
    assert ingest.receive(stored, PEER, ExplicitVRLittleEndian, factory.CT).status == SUCCESS
    conflicting = _orphan(archive, factory.encode(first))

    # 2. An orphan whose series UID now names another patient's series.
    owned = factory.ct("PAT-B", WHEN, frame="1.2.4", series=factory.generate_uid())
    owned_data = factory.encode(owned)
    assert ingest.receive(owned_data, PEER, ExplicitVRLittleEndian, factory.CT).status == SUCCESS
    intruder = factory.ct("PAT-C", WHEN, frame="1.2.4", series=owned.SeriesInstanceUID)
    intruder_data = factory.encode(intruder)
    misfiled = _orphan(archive, intruder_data)

    # 3. An orphan that cannot be decoded; 4. a stray copy of an archived instance;
    # 5. a plain orphan, which is re-indexed where it lies.
    garbage = archive.archive / "stray" / "garbage.dcm"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"not DICOM" * 50)
    copy = archive.archive / "stray" / "copy.dcm"
    shutil.copyfile(data_dir / index.instance(owned.SOPInstanceUID)["path"], copy)
    plain_data = factory.encode(factory.ct("PAT-D", WHEN, frame="1.2.5"))
    plain = _orphan(archive, plain_data)
    ingest.close()

    caplog.set_level(logging.WARNING, logger="theranode.service.receive.reconcile")
    with running_node(settings) as node:  # before: IntegrityError here, on every start
        index = node.index
        # 1: the archived copy is unchanged; the orphan is kept aside in conflicts/
        row = index.instance(first.SOPInstanceUID)
        assert row is not None and (data_dir / row["path"]).read_bytes() == stored
        assert not conflicting.exists()
        conflict = index.recent_conflicts()
        assert [c["sop_instance_uid"] for c in conflict] == [first.SOPInstanceUID]
        assert (data_dir / conflict[0]["path"]).read_bytes() == factory.encode(first)
        # 2 and 3: quarantined with the status a C-STORE would get
        quarantine = {r["status"]: r for r in index.recent_quarantine()}
        assert set(quarantine) == {MISSING_ATTRIBUTE, UNDECODABLE}
        assert "another patient" in quarantine[MISSING_ATTRIBUTE]["reason"]
        kept = data_dir / quarantine[MISSING_ATTRIBUTE]["path"]
        assert kept.read_bytes() == intruder_data and not misfiled.exists()
        assert index.instance(intruder.SOPInstanceUID) is None
        assert (data_dir / quarantine[UNDECODABLE]["path"]).read_bytes() == b"not DICOM" * 50
        assert not garbage.exists()
        # 4: the stray copy removed, the archived instance untouched
        assert not copy.exists()
        assert sha256_hex((data_dir / index.instance(owned.SOPInstanceUID)["path"])
                          .read_bytes()) == sha256_hex(owned_data)
        # 5: re-indexed in place
        row = index.instance(instance_header(decode(plain_data), TEST_KEYER).sop_instance_uid)
        assert row is not None and data_dir / row["path"] == plain and plain.exists()
        assert index.archived_paths() == {
            archive.relative(p) for p in archive.archive.rglob("*.dcm")}
    logged = "\n".join(
        r.getMessage() for r in caplog.records if r.name == "theranode.service.receive.reconcile"
    )
    for line in ("1 unindexed archive file(s) re-indexed",
                 "1 unindexed archive file(s) moved to conflicts/",
                 "2 unindexed archive file(s) quarantined",
                 "1 unindexed archive file(s) removed (identical to an archived instance)"):
        assert line in logged


def test_reconciliation_twice_finds_nothing_left(tmp_path: Path, database_url: str):
    """What one start filed is indexed or moved: the next start has nothing to do."""
    settings = make_settings(tmp_path / "data", database={"url": database_url})
    archive = Archive(settings.data_dir, min_free_disk_mb=0)
    _orphan(archive, factory.encode(factory.ct("PAT-E", WHEN, frame="1.2.6")))
    with running_node(settings) as node:
        assert node.reconcile() == {}
        assert node.index.counts()["instances"] == 1
