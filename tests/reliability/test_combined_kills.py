"""Crash safety at scale, all at once: five SIGKILLs of ``theranode serve`` while three senders
store three patients' cycles in parallel, the cycles are computed and the results delivered.

The kills are aimed at the four phases (ingest only, ingest while jobs run, jobs only,
delivery); the test fails unless each phase was hit. After every restart each instance a
sender saw acknowledged is indexed and archived whole and no indexed file is half-written;
at the end every job of the clean run (the same scenario without kills) is done exactly
once from the same inputs, the doses, RT Dose pixels, course totals and result objects are
the clean run's, and the destination received every object. The two checking functions are
tested on doctored data first, so a check that cannot fail does not pass silently. The
full-size run (50 kills, four patients' four-cycle courses) is in
``benchmarks/reliability.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from tests.reliability.combined_kills import (
    STAGES,
    CombinedReport,
    clean_run_problems,
    compare_with_clean,
    kill_slots,
    run_combined,
    write_patients,
)
from tests.reliability.course_runs import CycleOutput
from tests.reliability.destination import Arrival
from tests.reliability.job_kills import resent
from tests.reliability.kills import Sender, verify
from tests.reliability.outage import CourseRun
from tests.service import factory
from tests.service.keys import TEST_KEYER
from theranode.dicomio.headers import instance_header
from theranode.service.receive.archive import sha256_hex
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobRecord, JobState

logger = logging.getLogger(__name__)

PATIENTS, CYCLES, KILLS = 3, (1,), 5
WHEN = datetime(2024, 5, 7, 9, 15)


def test_kills_are_aimed_at_every_phase_of_every_wave_in_proportion_to_its_transfer() -> None:
    assert [STAGES[stage] for _, stage in kill_slots(5, [495])] == [
        "ingest", "ingest", "ingest + jobs", "jobs", "delivery"]
    slots = kill_slots(50, [660, 660, 168, 168])
    assert len(slots) == 50 and slots == sorted(slots) and len(set(slots)) == 16
    assert Counter(wave for wave, _ in slots) == {0: 20, 1: 20, 2: 5, 3: 5}


def test_verify_finds_an_unindexed_acknowledged_instance_and_a_half_written_file(
    tmp_path: Path,
) -> None:
    ds = factory.ct("VERIFY", WHEN, frame=factory.generate_uid())
    data = factory.encode(ds)
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "a.dcm").write_bytes(data[:-100])  # indexed whole, then cut
    index = IndexStore(open_database(tmp_path / "theranode.db"))
    index.add_instance(instance_header(ds, TEST_KEYER), path="archive/a.dcm",
                       sha256=sha256_hex(data), size=len(data),
                       transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                       received=WHEN, calling_ae="TEST", peer="")
    index.db.conn.close()
    problems = verify(tmp_path, [Sender("TEST", [], acknowledged={"1.2.3.4": "pixels"})])
    assert "acknowledged 1.2.3.4 is not indexed" in problems
    assert f"indexed {ds.SOPInstanceUID} is missing or half-written in the archive" in problems


def _job(job_id: int, kind: str, label: str, version: int = 1,
         state: JobState = JobState.DONE) -> JobRecord:
    return JobRecord(job_id, kind, f"{kind}|P|{label}", "P", label, f"fp-{label}", state,
                     version, "", None, None, 1, None, "", None, None)


def _clean_run() -> CourseRun:
    jobs = [_job(1, "cycle", "1.1"), _job(2, "course", "1")]
    objects = [{"job_id": 1, "sop_instance_uid": "1.1"}, {"job_id": 2, "sop_instance_uid": "2.1"}]
    arrivals = [Arrival(o["sop_instance_uid"], "", "h") for o in objects]
    return CourseRun(jobs, objects, arrivals, {"P/1": CycleOutput(1, {"liver": 2.0}, b"x")},
                     {"P v1 liver": 2.0}, 0, 0, 0.0)


def test_the_comparison_finds_a_job_run_twice_a_changed_dose_and_a_lost_delivery() -> None:
    clean = CombinedReport(1, 1, 0, run=_clean_run())
    assert clean_run_problems(clean) == []
    assert compare_with_clean(dataclasses.replace(clean, kills=1), clean) == []
    run = _clean_run()
    doctored = CourseRun(
        [*run.jobs, _job(3, "cycle", "1.1")],  # the same cycle computed again
        [*run.objects, {"job_id": 3, "sop_instance_uid": "1.1"}],
        run.arrivals[:1],  # the course result never arrived
        {"P/1": CycleOutput(1, {"liver": 2.5}, b"x")}, run.course_totals_gy, 0, 0, 0.0)
    problems = compare_with_clean(CombinedReport(1, 1, 0, kills=1, run=doctored), clean)
    assert any("computed 2 times" in p for p in problems), problems
    assert any("liver" in p and "2.5" in p for p in problems), problems
    assert any("first arrivals" in p for p in problems), problems


@pytest.mark.slow
def test_sigkills_while_senders_store_and_jobs_run_lose_nothing_and_change_no_result(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    manifests = write_patients(tmp_path_factory.mktemp("courses"), PATIENTS, CYCLES)
    # The clean run needs nothing from the kill run (its own node, destination and senders;
    # its jobs do not depend on timing), so it runs beside it rather than before it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clean-run") as pool:
        clean_run = pool.submit(run_combined, tmp_path_factory.mktemp("clean"), manifests)
        report = run_combined(tmp_path_factory.mktemp("kills"), manifests, kills=KILLS, seed=7)
        clean = clean_run.result()
    assert clean_run_problems(clean) == []
    print("\n".join(report.moments))
    assert report.problems == [], "\n".join(report.problems[:20])
    assert report.kills == KILLS
    assert set(report.phases) >= set(STAGES), report.moments
    assert report.acknowledged == report.indexed == report.instances == clean.instances
    assert report.run is not None
    assert sum(j.attempts for j in report.run.jobs) > len(report.run.jobs), "jobs were re-run"
    assert compare_with_clean(report, clean) == []
    logger.info("resent after a kill: %d instances, %d result objects",
                report.duplicates_after_restart, resent(report.run))
