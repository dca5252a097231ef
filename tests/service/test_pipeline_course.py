"""A whole four-cycle course through a running node: cycles 3-4 scaled from cycle 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.nodes import make_settings, running_node, send
from tests.service.test_ingest_peers import course_files
from tests.service.test_pipeline import cycle_jobs, stored_result
from tests.waiting import wait_for
from theranode.dosimetry.results import DoseMethod
from theranode.service.store.jobs import JobState

ORGANS = ("Liver", "Kidney_L", "Kidney_R", "Spleen")


def test_four_cycle_course_is_computed_with_single_time_point_cycles_and_a_course_result(
    phantom_course, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    settings = make_settings(
        tmp_path / "data", protocol={"quiet_period_s": 1.0}, jobs={"poll_interval_s": 0.5},
        destinations=[{"name": "files", "folder": str(outbox)}])
    with running_node(settings) as node:
        assert set(send(node.port, course_files(phantom_course))) == {0}
        done = wait_for(
            lambda: (jobs if len(jobs := [j for j in cycle_jobs(node.jobs)
                                          if j.state is JobState.DONE]) == 4 else None),
            400, "four computed cycles")
        course_job = wait_for(lambda: [j for j in node.jobs.all() if j.kind == "course"
                                       and j.state is JobState.DONE], 120, "the course result")
        results = {stored_result(settings.data_dir, j).cycle_number:
                   stored_result(settings.data_dir, j) for j in done}
    assert course_job
    assert results[1].method is results[2].method is DoseMethod.MULTI_TIME_POINT
    assert results[3].method is results[4].method is DoseMethod.SINGLE_TIME_POINT_SCALED
    truth = {c["number"]: c["vois"] for c in phantom_course.truth["cycles"]}
    for number in (3, 4):
        for name in ORGANS:
            # the paper's formula relative to cycle 2, as the truth computes it; the
            # ratio cancels most partial volume (each cycle is scanned in its own pose)
            expected = (truth[number][name]["stp_formula_dose_gy"]
                        / truth[2][name]["mean_dose_gy"])
            found = results[number].voi(name).mean_gy / results[2].voi(name).mean_gy
            assert found == pytest.approx(expected, rel=0.06), (number, name)
    assert len(list(outbox.rglob("*.dcm"))) >= 3 * 5  # RT Dose, SR, PDF per cycle and course
