"""Hostile input processed: cycles stored whole but bad for dosimetry, next to a good patient.

Six victim patients each send a complete cycle spoiled in one way (contours outside the
image, SPECT counts all zero or absurdly scaled, CT numbers far off the Hounsfield scale,
a Tc-99m SPECT, SPECTs in no CT's frame of reference: tests/reliability/bad_cycles.py).
The node keeps serving; a cycle whose contours, counts or CT numbers cannot give doses
ends failed with a reason ``theranode jobs`` shows; the Tc-99m SPECTs are ignored for Lu-177
dosimetry with the reason in ``theranode status``; SPECTs in no CT's frame of reference are
computed on their time point's CT (service/plan/completion.py) with a warning in the result; and
the good patient's doses and RT Dose pixels are exactly those the pipeline computes for
it alone. The corpus of malformed objects (refused or flagged when stored) is
tests/reliability/test_hostile.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import free_port
from tests.reliability.bad_cycles import BadCycle, write_bad_cycles
from tests.reliability.course_runs import (
    FAULT_SUPERSAMPLING,
    NodeDatabase,
    course_files,
    direct_cycle_output,
    outputs_by_cycle,
    write_node_config,
)
from tests.reliability.processes import ROOT, start_node
from tests.service.nodes import send
from tests.waiting import wait_for
from theranode.dicomio.synthetic_course import CourseWriteSpec, write_course
from theranode.service.jobs.results import load_stored_result
from theranode.service.store.jobs import JobRecord, JobState

GOOD_SEED = 21
#: What each spoiled cycle must end as: a failed job whose message says this, a done job
#: whose result warns of this, or no job with this reason in ``theranode status``.
FAILS_BECAUSE = {
    "contours-outside-image": "holds no usable VOI",
    "spect-all-zero": "holds 0 MBq in its field of view",
    "spect-absurdly-scaled": "MBq in its field of view",
    "ct-absurd-hu": "HU; CT numbers lie between",
}
WARNS_BECAUSE = {"spect-foreign-frame": "not in its CT's frame of reference"}
NO_JOB_BECAUSE = {"spect-technetium": "radionuclide ^99m^Technetium is not Lu-177"}
ENDED = (JobState.FAILED, JobState.INCOMPLETE, JobState.DONE)


def _cli(command: str, config: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "theranode", command, "--config", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def _patient_keys(db: NodeDatabase) -> dict[str, str]:
    return {r["patient_id"]: r["patient_key"]
            for r in db.query("select patient_id, patient_key from patients")}


def _cycle_jobs_of(db: NodeDatabase, patient_id: str) -> list[JobRecord]:
    key = _patient_keys(db).get(patient_id)
    return [j for j in db.of_kind("cycle") if j.patient_key == key]


def _victims_ended(db: NodeDatabase, victims: list[BadCycle]) -> bool:
    for victim in victims:
        jobs = _cycle_jobs_of(db, victim.patient_id)
        if victim.name not in NO_JOB_BECAUSE and (not jobs or jobs[-1].state not in ENDED):
            return False
    return True


def _warnings(data_dir: Path, job: JobRecord) -> tuple[str, ...]:
    return tuple(load_stored_result(data_dir / str(job.result_dir)).result.warnings)


@pytest.mark.slow
def test_bad_cycles_end_with_a_reason_and_leave_the_good_patient_exactly_alone(
    tmp_path: Path,
) -> None:
    good = write_course(tmp_path / "good",
                        CourseWriteSpec(cycles=(1,), supersampling=FAULT_SUPERSAMPLING), GOOD_SEED)
    victims = write_bad_cycles(tmp_path / "victims")
    assert {v.name for v in victims} == {*FAILS_BECAUSE, *WARNS_BECAUSE, *NO_JOB_BECAUSE}
    expected = direct_cycle_output(good)
    config, port, data_dir = write_node_config(tmp_path, free_port())
    node = start_node(config, port)
    db = NodeDatabase(data_dir)
    try:
        for manifest in [*(v.manifest for v in victims[:3]), good,
                         *(v.manifest for v in victims[3:])]:
            assert set(send(port, course_files(manifest))) == {0}, manifest.patient_id
        good_key = _patient_keys(db)[good.patient_id]
        wait_for(lambda: [j for j in db.of_kind("course", JobState.DONE)
                          if j.patient_key == good_key], 300, "the good patient's course")
        wait_for(lambda: _victims_ended(db, victims), 120, "every victim's cycle to end")
        assert node.process.poll() is None, "the node is still serving"
        jobs_text, status_text = _cli("jobs", config), _cli("status", config)
        found = outputs_by_cycle(db, good_key)
        endings = {v.name: _cycle_jobs_of(db, v.patient_id) for v in victims}
        assert node.stop() == 0
    finally:
        node.stop()
        db.close()
    for name, reason in FAILS_BECAUSE.items():
        assert [j.state for j in endings[name]] == [JobState.FAILED], (name, endings[name])
        message = endings[name][0].message
        assert reason in message and "Traceback" not in message, (name, message)
        assert message in jobs_text, (name, "theranode jobs shows the reason")
    for name, reason in WARNS_BECAUSE.items():
        assert [j.state for j in endings[name]] == [JobState.DONE], (name, endings[name])
        assert any(reason in w for w in _warnings(data_dir, endings[name][0])), name
    for name, reason in NO_JOB_BECAUSE.items():
        assert endings[name] == [], name
        assert reason in status_text, (name, "theranode status shows the reason")
    assert found.keys() == {1}
    assert found[1].mean_gy.keys() == expected.mean_gy.keys()
    for voi, dose_gy in expected.mean_gy.items():
        assert found[1].mean_gy[voi] == pytest.approx(dose_gy, rel=1e-9), voi
    assert found[1].rtdose_pixels == expected.rtdose_pixels
