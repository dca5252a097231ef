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
from collections import Counter

import pytest

from service.store.jobs import JobState
from tests.reliability.course_runs import two_cycle_course
from tests.reliability.job_kills import run_job_kills
from tests.reliability.outage import CourseRun, clean_two_cycle_run

logger = logging.getLogger(__name__)

KILLS = 5


def _assert_each_job_done_once(run: CourseRun) -> None:
    per_target = Counter(j.target for j in run.jobs)
    assert set(per_target.values()) == {1}, f"one job per target, found {per_target}"
    assert [(j.kind, j.state, j.version) for j in run.jobs] == [
        ("cycle", JobState.DONE, 1), ("cycle", JobState.DONE, 1), ("course", JobState.DONE, 1)
    ]


def _assert_same_results(run: CourseRun, clean: CourseRun) -> None:
    assert run.outputs.keys() == clean.outputs.keys() == {1, 2}
    for number, expected in clean.outputs.items():
        found = run.outputs[number]
        assert found.mean_gy.keys() == expected.mean_gy.keys()
        for name, dose_gy in expected.mean_gy.items():
            assert found.mean_gy[name] == pytest.approx(dose_gy, rel=1e-9), (number, name)
        assert found.rtdose_pixels is not None and found.rtdose_pixels == expected.rtdose_pixels
    assert run.course_totals_gy == pytest.approx(clean.course_totals_gy, rel=1e-9)


def _assert_delivered(run: CourseRun, kills: int) -> None:
    produced = [o["sop_instance_uid"] for o in run.objects]
    received = [a.sop_instance_uid for a in run.arrivals]
    assert len(set(produced)) == len(produced)
    assert list(dict.fromkeys(received)) == produced, "every object, first arrivals in order"
    bytes_per_uid: dict[str, set[str]] = {}
    for arrival in run.arrivals:
        bytes_per_uid.setdefault(arrival.sop_instance_uid, set()).add(arrival.sha256)
    assert all(len(h) == 1 for h in bytes_per_uid.values()), "a resend is the same object"
    resent = {uid: n for uid, n in Counter(received).items() if n > 1}
    assert all(n <= kills + 1 for n in resent.values()), resent
    logger.info("resent after a kill (same UID and bytes): %d of %d objects", len(resent),
                len(produced))


@pytest.mark.slow
def test_sigkills_during_a_course_leave_each_job_done_once_with_clean_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    clean = clean_two_cycle_run(tmp_path_factory)
    manifest = two_cycle_course(tmp_path_factory.mktemp("course"))
    report = run_job_kills(tmp_path_factory.mktemp("kills"), manifest, cycles=2, kills=KILLS,
                           seed=7)
    print("\n".join(report.moments))
    assert report.kills == KILLS
    assert report.kills_during_a_job >= 3, report.moments
    assert report.run is not None
    _assert_each_job_done_once(report.run)
    assert sum(j.attempts for j in report.run.jobs) > len(report.run.jobs), "jobs were re-run"
    _assert_same_results(report.run, clean)
    assert [o["sop_instance_uid"] for o in report.run.objects] == \
        [o["sop_instance_uid"] for o in clean.objects], "the clean run's objects, no others"
    _assert_delivered(report.run, KILLS)
