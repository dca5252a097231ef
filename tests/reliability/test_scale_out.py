"""Scale-out under faults: two ``theranode serve`` and two ``theranode worker`` processes on one
PostgreSQL database (Debian's server, started by the test set-up) and one data folder.

Four senders (two cameras per patient) store two patients' first cycles (four time points,
165 instances each) through a round-robin load balancer, a new association every ten
instances, so every series is split between both nodes. Node ``node-a`` is SIGKILLed when
30 % of the instances are acknowledged and restarted 1.5 s later (the other node takes the
senders meanwhile); the worker computing the first course job is SIGKILLed a seeded moment
into it and restarted at once (the job runs again once the worker's heartbeat is stale; a
course job, because it is the shortest to run again). Then every instance
a sender saw acknowledged is indexed exactly once and archived whole, every job is done
exactly once (per target and inputs one ``done`` job, nothing failed), and the jobs, doses,
RT Dose pixels, course totals and result objects are those of a single-node SQLite run of
the same files, every object delivered (a resend after a kill only as the same bytes).

Size: each cycle job takes 10–30 s of one core here (registration of four time points, the
PDF), each course job about 8 s, and the clean run computes the same jobs again, so two
patients' single cycle (4 cycle and 4 course jobs over both runs) is what fits the 150 s this
test may take. The full size (four patients' four-cycle courses: about six minutes alone
on a 2-core machine, where this test takes one and a half) is
``benchmarks/scale_out.py --faults-only``. The checking functions are tested on doctored
data first, so a check that cannot fail does not pass silently.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.reliability.combined_kills import clean_run_problems, compare_with_clean, write_patients
from tests.reliability.job_kills import resent
from tests.reliability.kills import Sender
from tests.reliability.scale_out import (
    NODE_NAMES,
    Balancer,
    Faults,
    archive_problems,
    indexed_more_than_once,
    job_problems,
    rerun_jobs,
    run_cluster,
)
from tests.service import factory
from tests.service.keys import TEST_KEYER
from theranode.dicomio.headers import instance_header
from theranode.service.receive.archive import sha256_hex
from theranode.service.store import open_database
from theranode.service.store.database import sqlite_url
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobRecord, JobState

logger = logging.getLogger(__name__)

PATIENTS, CYCLES = 2, (1,)
SEED = 90
WHEN = datetime(2024, 5, 7, 9, 15)


def test_the_balancer_sends_each_connection_to_the_next_node_and_falls_back_to_the_others(
) -> None:
    balancer = Balancer([1, 2])
    assert [balancer.next_ports() for _ in range(3)] == [[1, 2], [2, 1], [1, 2]]


def test_the_archive_check_finds_an_unindexed_instance_a_half_written_file_and_a_loss(
    tmp_path: Path,
) -> None:
    ds = factory.ct("SCALE", WHEN, frame=generate_uid())
    data = factory.encode(ds)
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "a.dcm").write_bytes(data[:-100])  # indexed whole, then cut
    url = sqlite_url(tmp_path / "theranode.db")
    index = IndexStore(open_database(url))
    index.add_instance(instance_header(ds, TEST_KEYER), path="archive/a.dcm",
                       sha256=sha256_hex(data), size=len(data),
                       transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                       received=WHEN, calling_ae="TEST", peer="")
    index.db.close()
    uid = str(ds.SOPInstanceUID)
    sender = Sender("TEST", [("1.2.3.4", tmp_path / "b.dcm", "x"), (uid, tmp_path / "a.dcm", "y")],
                    acknowledged={"1.2.3.4": "x", uid: "y"})
    problems = archive_problems(tmp_path, url, [sender], final=True)
    assert "acknowledged 1.2.3.4 is not indexed" in problems
    assert f"acknowledged {uid} is not archived whole" in problems
    assert "2 acknowledged and 1 indexed of 2 sent" in problems
    rows = [{"sop_instance_uid": "1.2"}, {"sop_instance_uid": "1.3"}, {"sop_instance_uid": "1.2"}]
    assert indexed_more_than_once(rows) == ["1.2 indexed 2 times"]


def _job(job_id: int, target: str, fingerprint: str, state: JobState = JobState.DONE,
         attempts: int = 1) -> JobRecord:
    return JobRecord(job_id, "cycle", target, "P", "1.1", fingerprint, state, 1, "", None, None,
                     attempts, None, "no result", None, None)


def test_the_job_check_finds_a_job_done_twice_from_the_same_inputs_and_a_failed_job() -> None:
    assert job_problems([_job(1, "t1", "a"), _job(2, "t1", "b"), _job(3, "t2", "a")]) == []
    problems = job_problems([_job(1, "t1", "a"), _job(2, "t1", "a"),
                             _job(3, "t2", "a", JobState.FAILED)])
    assert "t1 computed 2 times from the same inputs" in problems
    assert any(p.startswith("job 3 (cycle 1.1) ended failed") for p in problems), problems


@pytest.mark.slow
def test_two_nodes_and_two_workers_on_postgresql_lose_nothing_under_sigkills(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str,
) -> None:
    manifests = write_patients(tmp_path_factory.mktemp("courses"), PATIENTS, CYCLES, SEED)
    clean = run_cluster(tmp_path_factory.mktemp("clean"), manifests, database_url=None)
    assert clean.problems == [], "\n".join(clean.problems[:20])
    assert clean_run_problems(clean.combined()) == []
    report = run_cluster(tmp_path_factory.mktemp("cluster"), manifests, postgres_url,
                         faults=Faults())
    print("\n".join(report.moments))
    print(f"clean run {clean.seconds:.0f} s, cluster run {report.seconds:.0f} s")
    assert report.problems == [], "\n".join(report.problems[:20])
    assert report.kills == 2
    assert report.acknowledged_while_node_down > 0, "ingest went on while a node was down"
    assert report.worker_kill_hit_job, report.moments
    assert set(report.acknowledged_per_node) == set(NODE_NAMES), report.acknowledged_per_node
    assert report.run is not None and rerun_jobs(report.run), "the killed worker's job re-ran"
    assert compare_with_clean(report.combined(), clean.combined()) == []
    logger.info("clean run %.0f s, cluster run %.0f s; instances per node %s; resent result "
                "objects %d", clean.seconds, report.seconds, report.acknowledged_per_node,
                resent(report.run))
