"""Crash safety of jobs: five SIGKILLs of ``theranode serve`` while a two-cycle course is
computed and delivered (seeded moments: first cycle twice, second cycle, course, delivery).

After the last restart every job is done exactly once with version 1, the results equal a
clean run's (the outage run, which has no fault in the computation), and the destination
holds every result object. A resend of an object the destination had acknowledged before
the kill (same SOP Instance UID, same bytes) is possible by design (docs/conformance.md);
a different object under one UID, or an object the clean run does not produce, is not.
The full-size run is in ``benchmarks/reliability.py``.
"""

from __future__ import annotations

import logging

import pytest

from tests.reliability.course_runs import two_cycle_course
from tests.reliability.job_kills import compare_with_clean, resent, run_job_kills
from tests.reliability.outage import clean_two_cycle_run

logger = logging.getLogger(__name__)

KILLS = 5


@pytest.mark.slow
def test_sigkills_during_a_course_leave_each_job_done_once_with_clean_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    manifest = two_cycle_course(tmp_path_factory)
    report = run_job_kills(tmp_path_factory.mktemp("kills"), manifest, cycles=2, kills=KILLS,
                           seed=7)
    clean = clean_two_cycle_run(tmp_path_factory)  # perhaps made meanwhile by another worker
    print("\n".join(report.moments))
    assert report.kills == KILLS
    assert report.kills_during_a_job >= 3, report.moments
    assert report.run is not None
    assert sum(j.attempts for j in report.run.jobs) > len(report.run.jobs), "jobs were re-run"
    assert compare_with_clean(report, clean, cycles=2) == []
    logger.info("resent after a kill (same UID and bytes): %d", resent(report.run))
