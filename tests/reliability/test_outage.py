"""Outage for a whole course: the destination is down while a node computes two cycles and
the course result; when it comes up, every object arrives once, in the order the jobs
produced them (the outbox delivers per destination by result-object id: service/deliver/outbox.py).

The full-size run is in ``benchmarks/reliability.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.reliability.outage import clean_two_cycle_run
from theranode.service.store.jobs import JobState

RESULTS_PER_JOB = 3  # RT Dose, SR, PDF


@pytest.mark.slow
def test_destination_down_for_a_whole_course_receives_every_object_once_in_order(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = clean_two_cycle_run(tmp_path_factory)
    states = Counter((j.kind, j.state) for j in run.jobs)
    assert states == {("cycle", JobState.DONE): 2, ("course", JobState.DONE): 1}, states
    produced = [o["sop_instance_uid"] for o in run.objects]
    assert len(produced) == 3 * RESULTS_PER_JOB == len(set(produced))
    assert run.failed_attempts_while_down >= 2, "the outbox kept trying while the PACS was down"
    assert run.pending_while_down == len(produced), "nothing was lost or refused during the outage"

    received = [a.sop_instance_uid for a in run.arrivals]
    assert received == produced, "each object once, in the order the jobs produced them"
    course_job = next(j.id for j in run.jobs if j.kind == "course")
    assert [o["job_id"] for o in run.objects][-RESULTS_PER_JOB:] == [course_job] * 3, \
        "the course result comes after the cycles it sums"
