"""Two patients racing into one new series: exactly one is filed, the other refused.

The series-owner check and the insert run in one write transaction
(:meth:`theranode.service.store.index.IndexStore.add_instance`: SQLite's ``BEGIN IMMEDIATE``,
PostgreSQL's advisory write lock), so two associations storing patients A and B into the
same new Series Instance UID at the same moment can no longer both be answered Success: the
second gets the series-owner refusal (0xC110) and its bytes go to quarantine. That holds for
two associations of one node and for two nodes on one database (two connections, as two
processes or machines have), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tests.service import factory
from tests.service.indexing import receive_at_once
from tests.service.keys import TEST_KEYER
from theranode.service.receive.archive import Archive, sha256_hex
from theranode.service.receive.ingest import MISSING_ATTRIBUTE, SUCCESS, Ingest
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

TRIES = 40
WHEN = datetime(2024, 5, 7, 9, 0)


def _pair(series: str) -> tuple[bytes, bytes]:
    """Two CTs of different patients that name the same (new) series UID."""
    study = factory.generate_uid()
    return tuple(  # type: ignore[return-value]
        factory.encode(factory.ct(patient, WHEN, frame="1.2.3", study=study, series=series))
        for patient in ("RACE-A", "RACE-B")
    )


@pytest.mark.parametrize("connections", [1, 2], ids=["one-connection", "two-connections"])
def test_never_two_patients_in_one_series(tmp_path: Path, database_url: str, connections: int):
    """One Ingest (two associations of one node), or two on separate database connections
    (two nodes sharing the database and the archive)."""
    data_dir = tmp_path / "data"
    archive = Archive(data_dir, min_free_disk_mb=0)
    stores = [IndexStore(open_database(database_url)) for _ in range(connections)]
    ingests = tuple(Ingest(archive, stores[n % connections], TEST_KEYER) for n in (0, 1))
    if connections == 1:
        ingests = (ingests[0], ingests[0])
    index = stores[0]
    try:
        for attempt in range(TRIES):
            series = factory.generate_uid()
            pair = _pair(series)
            outcomes = receive_at_once(ingests, pair)  # type: ignore[arg-type]
            statuses = sorted(o.status for o in outcomes)
            assert statuses == [SUCCESS, MISSING_ATTRIBUTE], (attempt, outcomes)
            loser = next(n for n, o in enumerate(outcomes) if o.status != SUCCESS)
            assert "already belongs to a series of another patient" in outcomes[loser].comment
            owner = index.series_owner(series)
            assert owner is not None
            rows = list(index.db.query(
                "select sop_instance_uid from instances where series_uid = ?", [series]))
            assert len(rows) == 1, "one instance in the series: the winner's"
            winner = outcomes[1 - loser].header
            assert winner is not None and owner["patient_key"] == winner.patient_key
            assert rows[0]["sop_instance_uid"] == winner.sop_instance_uid
            kept = index.recent_quarantine(limit=1)[0]
            assert kept["status"] == MISSING_ATTRIBUTE
            assert (data_dir / kept["path"]).read_bytes() == pair[loser], "loser's bytes kept"
        assert index.counts()["quarantine"] == TRIES
        archived = sorted(p for p in archive.archive.rglob("*.dcm"))
        assert len(archived) == TRIES, "no refused file left in the archive"
        assert {sha256_hex(p.read_bytes()) for p in archived} == {
            r["sha256"] for r in index.db.query("select sha256 from instances")}
    finally:
        for ingest in set(ingests):
            ingest.close()
