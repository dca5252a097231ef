"""Administered activity from the SPECT headers into the result, SR and PDF; and the
plausibility hold: a cycle whose dose per administered activity no patient can have is
held, not sent (issue #11)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from tests.dicomio.result_records import cycle_result
from tests.pdf_text import pdf_text
from tests.service.nodes import make_settings, wait_job_ended
from theranode.config.schema import Settings, settings_from_dict
from theranode.dicomio.sr import ADMINISTERED_ACTIVITY, MEGABECQUEREL, read_sr_report
from theranode.dicomio.synthetic_course import CourseManifest, CourseWriteSpec, write_course
from theranode.dosimetry.plausibility import PlausibilityLimits, implausible_doses
from theranode.dosimetry.results import CycleResult, VoiKind
from theranode.service.errors import ImplausibleResultError
from theranode.service.jobs.checks import administered_activity
from theranode.service.jobs.payload import encode_payload
from theranode.service.jobs.pipeline import run_job
from theranode.service.jobs.results import load_stored_result
from theranode.service.jobs.runner import JobRunner
from theranode.service.jobs.spec import CycleJobInput, JobKind, JobSpec, TimePointInput
from theranode.service.store import open_database
from theranode.service.store.jobs import JobState, JobStore
from theranode.service.store.outbox import OutboxStore

SEED = 11


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> CourseManifest:
    return write_course(tmp_path_factory.mktemp("course"), CourseWriteSpec(cycles=(1,)), SEED)


def cycle_input(course: CourseManifest, root: Path) -> CycleJobInput:
    """The cycle's job input, file paths relative to ``root`` (a copy of the course folder)."""
    rel = lambda p: str(Path(p).relative_to(course.out_dir))  # noqa: E731
    tps = course.time_points
    return CycleJobInput(
        1, tps[0].time_point.injection_datetime.isoformat(), True,
        tuple(TimePointInput(0, tp.time_point.elapsed_h, tuple(map(rel, tp.spect_files)),
                             tuple(map(rel, tp.ct_files))) for tp in tps),
        rel(tps[0].rtstruct_file))


def header_activities(course: CourseManifest) -> list[float]:
    return [float(pydicom.dcmread(f).RadiopharmaceuticalInformationSequence[0]
                  .RadionuclideTotalDose)
            for tp in course.time_points for f in tp.spect_files[:1]]


@pytest.fixture(scope="module")
def computed(course: CourseManifest) -> tuple[CycleResult, Path]:
    spec = JobSpec(job_id=0, kind=JobKind.CYCLE, version=1, created_at="2024-01-01T00:00:00",
                   data_dir=str(course.out_dir), settings=Settings(),
                   cycle=cycle_input(course, course.out_dir))
    outcome = run_job(spec)
    folder = course.out_dir / outcome.result_dir
    return load_stored_result(folder).result, folder


# -- administered activity ------------------------------------------------------------
def test_the_headers_activity_reaches_the_result(
    course: CourseManifest, computed: tuple[CycleResult, Path]
) -> None:
    recorded = header_activities(course)
    assert len(set(recorded)) == 1 and recorded[0] > 0
    result, _ = computed
    assert result.administered_activity_mbq == pytest.approx(recorded[0])
    assert not [w for w in result.warnings if "administered activity" in w]


def test_the_sr_holds_the_activity_as_a_dcm_113507_measurement_in_mbq(
    computed: tuple[CycleResult, Path]
) -> None:
    result, folder = computed
    sr = pydicom.dcmread(folder / "SR.dcm")
    assert read_sr_report(sr).administered_activity_mbq == pytest.approx(
        result.administered_activity_mbq)
    (container,) = [item for item in sr.ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeValue == "126011"]
    (num,) = container.ContentSequence
    assert num.ValueType == "NUM"
    name = num.ConceptNameCodeSequence[0]
    assert (name.CodeValue, name.CodingSchemeDesignator) == (ADMINISTERED_ACTIVITY.value, "DCM")
    unit = num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == (MEGABECQUEREL.value, "UCUM")


def test_the_pdf_header_states_the_activity(computed: tuple[CycleResult, Path]) -> None:
    result, folder = computed
    pdf = pydicom.dcmread(folder / "DOC.dcm")
    text = pdf_text(bytes(pdf.EncapsulatedDocument))
    activity = f"{result.administered_activity_mbq:.5g}"
    assert f"administered {activity} MBq" in text, text[:2000]
    assert "administered – MBq" not in text


def test_disagreeing_headers_are_reported_and_the_first_time_point_wins() -> None:
    chosen, notes = administered_activity([(4.0, 7400.0), (24.0, 7410.0), (72.0, 7000.0)])
    assert chosen == 7400.0
    assert len(notes) == 1 and "disagree" in notes[0] and "7000 MBq at 72 h" in notes[0]
    assert administered_activity([(4.0, 7400.0), (24.0, 7450.0)]) == (7400.0, [])
    assert administered_activity([(4.0, None), (24.0, 7300.0)]) == (7300.0, [])
    missing, notes = administered_activity([(4.0, None), (24.0, None)])
    assert missing is None and "RadionuclideTotalDose" in notes[0]


# -- plausibility hold ------------------------------------------------------------------
def test_bounds_are_per_voi_kind() -> None:
    result = cycle_result(1)
    organs = [v for v in result.vois if v.kind is not VoiKind.LESION]
    lesions = [v for v in result.vois if v.kind is VoiKind.LESION]
    assert organs and lesions
    assert implausible_doses(result.vois, 7400.0) == []
    top_organ = max(v.mean_gy for v in organs) / 7.4  # Gy/GBq
    tight = PlausibilityLimits(organ_gy_per_gbq=top_organ * 0.99, lesion_gy_per_gbq=1e6)
    reasons = implausible_doses(result.vois, 7400.0, tight)
    at_top = [v.name for v in organs if v.mean_gy / 7.4 > top_organ * 0.99]
    assert [r.split(" ")[0] for r in reasons] == at_top
    assert all("Gy/GBq" in r and "(lesion)" not in r for r in reasons)
    assert implausible_doses(result.vois, None, tight) == []  # no activity: no ratio


def test_a_dose_no_patient_can_have_is_held_and_nothing_is_sent(
    course: CourseManifest, tmp_path: Path
) -> None:
    """The headers record 1/100 of the activity the SPECT shows: every organ's dose per
    administered activity is 100 times the phantom's, as when a SPECT's units are misread."""
    data_dir = tmp_path / "data"
    shutil.copytree(course.out_dir, data_dir, ignore=shutil.ignore_patterns("results"))
    for tp in course.time_points:
        for spect in tp.spect_files:
            path = data_dir / Path(spect).relative_to(course.out_dir)
            ds = pydicom.dcmread(path)
            item = ds.RadiopharmaceuticalInformationSequence[0]
            item.RadionuclideTotalDose = f"{float(item.RadionuclideTotalDose) / 100:g}"
            ds.save_as(path)
    settings = make_settings(data_dir, destinations=[{"name": "pacs", "folder": str(tmp_path)}])
    store = JobStore(open_database(data_dir / "theranode.db"))
    job = store.submit(kind="cycle", target="cycle|p|1.1", patient_key="p", label="1.1",
                       fingerprint="held", payload=encode_payload(cycle_input(course, data_dir)),
                       created_at="2024-05-01T10:00:00")
    assert job is not None
    outbox = OutboxStore(store.db, store.lock)
    runner = JobRunner(store, outbox, settings)
    runner.start()
    try:
        held = wait_job_ended(store, job.id)
    finally:
        runner.stop()
    assert held.state is JobState.FAILED
    assert "Held, not sent" in held.message and "Liver (organ)" in held.message
    assert "max_organ_gy_per_gbq" in held.message
    assert outbox.pending("pacs") == []
    assert not list((data_dir / "results").glob("**/*.dcm"))


def test_the_engine_refuses_nothing_the_hold_would_not_report(
    course: CourseManifest, computed: tuple[CycleResult, Path]
) -> None:
    """The phantom's own doses are plausible (the hold does not fire on real values)."""
    result, _ = computed
    assert implausible_doses(result.vois, result.administered_activity_mbq) == []
    with pytest.raises(ImplausibleResultError, match="Held, not sent"):
        from theranode.service.jobs.checks import hold_if_implausible

        hold_if_implausible(result, make_settings(
            Path("unused"), dosimetry={"max_organ_gy_per_gbq": 1e-3}))


def test_hold_bounds_do_not_change_what_a_result_depends_on() -> None:
    """Raising a hold bound (or upgrading to a version that has them) recomputes nothing;
    a setting that changes doses does."""
    from theranode.service.plan.planner import result_settings_digest

    base = settings_from_dict({}, "test")
    raised = settings_from_dict(
        {"dosimetry": {"max_organ_gy_per_gbq": 50.0, "max_lesion_gy_per_gbq": 500.0}}, "test")
    other_curve = settings_from_dict({"dosimetry": {"recovery_plateau": 0.9}}, "test")
    assert result_settings_digest(raised) == result_settings_digest(base)
    assert result_settings_digest(other_curve) != result_settings_digest(base)
