"""Under the combined hostile-peer load a legitimate sender's course is stored whole and computed.

Idle sockets, partial and 256 MiB A-ASSOCIATE-RQs, idle echoing associations
holding every slot, and bombs (deflate, sequence items, elements, contour
points, 2,000 contour planes) sent on another association while the sender
stores a one-cycle course: every acknowledged instance indexed and archived
whole, the cycle and the course job done, every bomb answered its documented
status. Small sizes with lowered limits; ``benchmarks/reliability.py --only
hostile-peers`` runs it at full size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.course_runs import COURSE_SEED, FAULT_SUPERSAMPLING
from tests.reliability.hostile_peers import course_bombs, run_hostile_course
from theranode.dicomio.synthetic_course import CourseWriteSpec, write_course


@pytest.mark.slow
def test_a_course_is_stored_and_computed_under_every_hostile_peer_and_bomb(tmp_path: Path):
    manifest = write_course(tmp_path / "course",
                            CourseWriteSpec(cycles=(1,), supersampling=FAULT_SUPERSAMPLING),
                            COURSE_SEED)
    cases, expected = course_bombs(inflated_mb=48, items=30_000, elements=40_000,
                                   contour_points=200_001)
    report = run_hostile_course(
        tmp_path / "node", manifest, cycles=1, bomb_cases=cases, expected_status=expected,
        idle_sockets=40, partial_requests=5, oversized_requests=5, idle_associations=8,
        settle_s=2.0, timeout_s=240.0,
        security={"reclaim_idle_after_s": 2.0, "acse_timeout_s": 4.0, "max_inflated_mb": 32,
                  "max_sequence_items": 20_000, "max_elements": 30_000,
                  "max_contour_points": 200_000},
    )
    assert report.problems == []
    assert report.acknowledged == report.course_instances
    assert [b.status for b in report.bombs] == [expected[b.name] for b in report.bombs]
    assert sorted(report.bombs_during_course) == sorted(expected.items())
    assert [j.split(": ")[1] for j in report.jobs] == ["done", "done"], report.jobs
    assert report.threads_max < 100, "threads bounded by max_connections"
    assert report.idle_associations_reclaimed >= 1, "the sender took an idle slot"
