"""Every kind of object theranode writes is valid DICOM, always.

One RT Dose, SR and encapsulated PDF for every kind of result: cycles 1–4
(multi-time-point; single-time-point scaled from a reference cycle;
single-time-point fallbacks Hänscheid and Madsen), the course, superseding
versions, every kinetic model (mono-exponential, trapezoid + physical tail,
bi-exponential with uptake, AICc selection and its unranked fallback) and the
hand-built records of ``result_records`` (excluded lesion, notes, warnings).
The results come from the real engine on the session's small phantom course,
computed once per module (time points registered with the phantom's true
poses and the course map with a coarse registration, to keep the test short:
the values are not under test here, their encoding is).

Each object is written under pydicom's strict writing validation, encoded by
:func:`theranode.dicomio.part10.encode` (which refuses any element that breaks PS3.5),
read back from its bytes and encoded again to the same bytes; then
``dciodvfy`` (dicom3tools) must report no error on it. The warnings it may
report are listed below with the reason they are expected.

References
----------
DICOM PS3.5 6.2 (value representations), PS3.3 A.18 (RT Dose IOD), A.35.13
(Comprehensive 3D SR IOD), A.45.1 (Encapsulated PDF IOD).
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.config
import pytest
from pydicom.dataset import Dataset

from benchmarks.engine import load_cycle_inputs
from tests.dicomio import result_records
from tests.part10_bytes import read_back
from tests.peers import require_tool
from theranode.dicomio.course_report import write_course_pdf
from theranode.dicomio.dvh import dvhs_from_masks
from theranode.dicomio.part10 import encode, value_problems
from theranode.dicomio.pdf_report import write_cycle_pdf
from theranode.dicomio.rtdose import course_rt_dose, cycle_rt_dose
from theranode.dicomio.rtstruct import read_rois, roi_mask
from theranode.dicomio.source import (
    SourceContext,
    course_source_context,
    source_context_from_datasets,
)
from theranode.dicomio.sr import read_sr_report, write_course_sr, write_cycle_sr
from theranode.dicomio.synthetic_course import CourseManifest
from theranode.dicomio.uids import ResultIdentity, ResultKind
from theranode.dosimetry.course_map import compute_course
from theranode.dosimetry.cycle import (
    CycleInputs,
    EngineSettings,
    StpFallback,
    compute_multi_time_point_cycle,
    compute_single_time_point_cycle,
)
from theranode.dosimetry.registration import RegistrationSettings, RigidRegistration
from theranode.dosimetry.results import CourseResult, CycleResult, DoseMethod, KineticModel
from theranode.dosimetry.roi import CumulativeDvh, cumulative_dvh
from theranode.dosimetry.synthetic.phantom import relative_affine

#: dciodvfy warnings each object kind may carry, with the reason (docs/conformance.md).
EXPLAINED_WARNINGS: dict[str, tuple[str, ...]] = {
    # The RT Dose has no RT Plan to reference: Dose Summation Type PLAN_OVERVIEW
    # (PS3.3 C.8.8.3) is newer than dciodvfy's dictionary, and the Plan Overview
    # Sequence it asks for is reported as not in the IOD by the same release.
    "RTDOSE": ("PLAN_OVERVIEW", "not present in standard DICOM IOD"),
    # theranode's private coding scheme 99THERANODE (declared in the Coding
    # Scheme Identification Sequence) is unknown to dciodvfy.
    "SR": ("99THERANODE",),
    "DOC": (),
}

#: Madsen's population effective half-lives (h), by VOI kind; plausible values
#: for Lu-177 DOTATATE, used only to exercise the fallback.
POPULATION_HALF_LIFE_H = {"organ": 60.0, "marrow": 40.0, "lesion": 90.0}


@dataclass(frozen=True)
class CycleCase:
    """A cycle result with what its writers need."""

    result: CycleResult
    source: SourceContext
    dvhs: Mapping[str, CumulativeDvh]


@dataclass(frozen=True)
class CourseCase:
    """A course result with its source (the first cycle's, every cycle's inputs)."""

    result: CourseResult
    source: SourceContext


# -- the results, computed once ---------------------------------------------------
def _known_registrations(
    manifest: CourseManifest, cycle_number: int, keep_h: tuple[float, ...] | None = None
) -> tuple[RigidRegistration | None, ...]:
    """The phantom's true poses as registrations to the cycle's first time point."""
    points = sorted(
        (tp.time_point for tp in manifest.time_points
         if tp.time_point.cycle_number == cycle_number),
        key=lambda tp: tp.elapsed_h,
    )
    if keep_h is not None:
        points = [tp for tp in points if tp.elapsed_h in keep_h]
    first = points[0]
    return (None, *(
        RigidRegistration.known(relative_affine(first.transform, tp.transform))
        for tp in points[1:]
    ))


def _source(manifest: CourseManifest, cycle_number: int) -> SourceContext:
    """The cycle's source context, built as the node builds it from its inputs."""
    written = sorted(
        (tp for tp in manifest.time_points if tp.time_point.cycle_number == cycle_number),
        key=lambda tp: tp.time_point.elapsed_h,
    )
    ct_sets = [
        [pydicom.dcmread(p, stop_before_pixels=True) for p in tp.ct_files] for tp in written
    ]
    spects = [pydicom.dcmread(p, stop_before_pixels=True) for tp in written
              for p in tp.spect_files]
    rtstruct = written[0].rtstruct_file
    assert rtstruct is not None
    return source_context_from_datasets(
        ct_sets[0],
        structure_set=pydicom.dcmread(rtstruct),
        source_images=[*spects, *(ds for cts in ct_sets[1:] for ds in cts)],
    )


def _dvhs(manifest: CourseManifest, cycle_number: int, result: CycleResult) -> dict[
    str, CumulativeDvh
]:
    """DVHs of the result's VOIs on its dose map, as the node computes them."""
    assert result.dose_map is not None
    written = min(
        (tp for tp in manifest.time_points if tp.time_point.cycle_number == cycle_number),
        key=lambda tp: tp.time_point.elapsed_h,
    )
    assert written.rtstruct_file is not None
    names = {v.name for v in result.vois}
    masks = {
        roi.name: roi_mask(roi, result.dose_map)
        for roi in read_rois(pydicom.dcmread(written.rtstruct_file))
        if roi.name in names
    }
    return dvhs_from_masks(
        result.dose_map, {k: m for k, m in masks.items() if m.array.any()}
    )


def _only(inputs: CycleInputs, keep_h: tuple[float, ...]) -> CycleInputs:
    points = tuple(tp for tp in inputs.time_points if tp.elapsed_h in keep_h)
    return dataclasses.replace(inputs, time_points=points)


def _cycle_results(manifest: CourseManifest) -> dict[str, tuple[int, CycleResult]]:
    """Every kind of cycle result the engine produces, by case name."""
    inputs = {n: load_cycle_inputs(manifest, n) for n in (1, 2, 3, 4)}
    regs = {n: _known_registrations(manifest, n) for n in (1, 2)}
    mtp = compute_multi_time_point_cycle
    stp = compute_single_time_point_cycle
    cycle2 = mtp(inputs[2], EngineSettings(select_model_by_aicc=True), regs[2])
    three_h = (4.0, 24.0, 72.0)
    results = {
        "cycle1-monoexponential": mtp(inputs[1], EngineSettings(), regs[1]),
        "cycle1-trapezoid-tail": mtp(
            inputs[1], EngineSettings(kinetic_model=KineticModel.TRAPEZOID_TAIL), regs[1]
        ),
        "cycle1-biexponential": mtp(
            inputs[1],
            EngineSettings(kinetic_model=KineticModel.BIEXPONENTIAL_UPTAKE),
            regs[1],
        ),
        "cycle2-aicc": cycle2,
        "cycle2-aicc-unranked-3-points": mtp(
            _only(inputs[2], three_h),
            EngineSettings(select_model_by_aicc=True),
            _known_registrations(manifest, 2, three_h),
        ),
        "cycle3-scaled": stp(inputs[3], EngineSettings(), reference=cycle2),
        "cycle4-hanscheid": stp(inputs[4], EngineSettings()),
        "cycle4-madsen": stp(
            inputs[4],
            EngineSettings(
                stp_fallback=StpFallback.MADSEN,
                population_half_life_h=POPULATION_HALF_LIFE_H,
            ),
        ),
    }
    return {name: (r.cycle_number, r) for name, r in results.items()}


#: Coarse cross-cycle registration for the course map: the map's values are
#: not under test here, its encoding is.
FAST_REGISTRATION = RegistrationSettings(
    working_spacing_mm=8.0,
    shrink_factors=(1,),
    smoothing_sigmas_mm=(0.0,),
    max_iterations=20,
    min_sampled_voxels=2_000,
    max_sampled_voxels=5_000,
)


#: The cases, then the superseding versions written for some of them.
CASES = (
    "cycle1-monoexponential",
    "cycle1-trapezoid-tail",
    "cycle1-biexponential",
    "cycle2-aicc",
    "cycle2-aicc-unranked-3-points",
    "cycle3-scaled",
    "cycle4-hanscheid",
    "cycle4-madsen",
    "course-4-cycles",
    "records-cycle",
    "records-course",
)
VERSIONS = (*((case, 1) for case in CASES), ("cycle3-scaled", 2), ("course-4-cycles", 2))
MODALITIES = ("RTDOSE", "SR", "DOC")
OBJECTS = [
    pytest.param(case, version, modality, id=f"{case}-v{version}-{modality}")
    for case, version in VERSIONS
    for modality in MODALITIES
]


def _course(
    manifest: CourseManifest, cycles: dict[str, tuple[int, CycleResult]]
) -> CourseResult:
    """The four-cycle course (cycles 1, 2 multi-time-point; 3 scaled; 4 Hänscheid)."""
    chosen = [cycles[name][1] for name in
              ("cycle1-monoexponential", "cycle2-aicc", "cycle3-scaled", "cycle4-hanscheid")]
    cts = [load_cycle_inputs(manifest, n).reference.ct for n in (1, 2, 3, 4)]
    return compute_course(chosen, reference_cts=cts, registration=FAST_REGISTRATION)


def _records() -> tuple[CycleCase, CourseCase]:
    """The hand-built records of ``result_records`` (every optional field filled)."""
    dose = result_records.dose_map()
    source, _ = result_records.source_for_cycle(dose=dose)
    dvhs = {
        name: cumulative_dvh(dose, result_records.box_mask(box))
        for name, box in (("liver", result_records.LIVER_BOX),
                          ("lesion 1", result_records.LESION_BOX))
    }
    return (
        CycleCase(result_records.cycle_result(1, dose), source, dvhs),
        CourseCase(result_records.course_result(dose), source),
    )


@pytest.fixture(scope="module")
def cases(phantom_course: CourseManifest) -> dict[str, CycleCase | CourseCase]:
    """Every case: engine results on the phantom course and the hand-built records."""
    cycles = _cycle_results(phantom_course)
    sources = {n: _source(phantom_course, n) for n in (1, 2, 3, 4)}
    found: dict[str, CycleCase | CourseCase] = {
        name: CycleCase(result, sources[n], _dvhs(phantom_course, n, result))
        for name, (n, result) in cycles.items()
    }
    course = _course(phantom_course, cycles)
    assert course.course_map is not None
    found["course-4-cycles"] = CourseCase(
        course, course_source_context([sources[n] for n in (1, 2, 3, 4)])
    )
    found["records-cycle"], found["records-course"] = _records()
    assert set(found) == set(CASES)
    return found


def _identity(case: CycleCase | CourseCase, version: int) -> ResultIdentity:
    if isinstance(case, CourseCase):
        return result_records.identity(ResultKind.COURSE, None, version)
    return result_records.identity(ResultKind.CYCLE, case.result.cycle_number, version)


def _write(case: CycleCase | CourseCase, version: int, modality: str) -> Dataset:
    identity = _identity(case, version)
    if isinstance(case, CourseCase):
        course_writers: dict[str, Callable[[], Dataset]] = {
            "RTDOSE": lambda: course_rt_dose(case.result, case.source, identity),
            "SR": lambda: write_course_sr(case.result, case.source, identity),
            "DOC": lambda: write_course_pdf(case.result, case.source, identity),
        }
        return course_writers[modality]()
    cycle_writers: dict[str, Callable[[], Dataset]] = {
        "RTDOSE": lambda: cycle_rt_dose(case.result, case.source, identity, dvhs=case.dvhs),
        "SR": lambda: write_cycle_sr(case.result, case.source, identity),
        "DOC": lambda: write_cycle_pdf(case.result, case.source, identity, dvhs=case.dvhs),
    }
    return cycle_writers[modality]()


@pytest.fixture(scope="module")
def written() -> dict[tuple[str, int, str], bytes]:
    """Bytes of each object once written (filled by the first test that writes it)."""
    return {}


def _bytes(
    cases: dict[str, CycleCase | CourseCase],
    written: dict[tuple[str, int, str], bytes],
    key: tuple[str, int, str],
) -> bytes:
    """The object's bytes, written under pydicom's strict validation.

    The calling test runs under ``writing_validation_mode = RAISE``
    (``tests/conftest.py``); pydicom 3 validates a value assigned to a
    dataset attribute in ``reading_validation_mode``, so that is made strict
    too while the writers run.
    """
    if key not in written:
        case, version, modality = key
        with pydicom.config.strict_reading():
            written[key] = encode(_write(cases[case], version, modality))
    return written[key]


# -- the tests ---------------------------------------------------------------------
def test_the_cases_cover_every_method_and_kinetic_model(
    cases: dict[str, CycleCase | CourseCase],
) -> None:
    cycles = [c.result for c in cases.values() if isinstance(c, CycleCase)]
    assert {c.method for c in cycles} == set(DoseMethod)
    models = {v.fit.model for c in cycles for v in c.vois if v.fit is not None}
    assert models == set(KineticModel)
    notes = [n for c in cycles for v in c.vois if v.fit is not None for n in v.fit.notes]
    assert any("chosen by AICc" in n for n in notes)
    assert any("used without AICc ranking" in n for n in notes)
    assert {c.cycle_number for c in cycles} == {1, 2, 3, 4}


@pytest.mark.parametrize(("case", "version", "modality"), OBJECTS)
def test_object_is_valid_and_round_trips_through_bytes(
    cases: dict[str, CycleCase | CourseCase],
    written: dict[tuple[str, int, str], bytes],
    case: str,
    version: int,
    modality: str,
) -> None:
    data = _bytes(cases, written, (case, version, modality))
    back = read_back(data)
    assert back.Modality == modality
    assert value_problems(back) == []
    assert encode(back) == data
    assert back.SeriesDescription.endswith(f" v{version}")
    result = cases[case].result
    if modality == "SR" and isinstance(result, CycleResult):
        report = read_sr_report(back)
        for voi in result.vois:
            group = report.group(voi.name, f"cycle {result.cycle_number}")
            assert group.values["mean_gy"] == pytest.approx(voi.mean_gy, rel=1e-9)


@pytest.mark.peer
@pytest.mark.parametrize(("case", "version", "modality"), OBJECTS)
def test_dciodvfy_finds_no_error(
    cases: dict[str, CycleCase | CourseCase],
    written: dict[tuple[str, int, str], bytes],
    tmp_path: Path,
    case: str,
    version: int,
    modality: str,
) -> None:
    tool = require_tool("dciodvfy")
    path = tmp_path / f"{modality}.dcm"
    path.write_bytes(_bytes(cases, written, (case, version, modality)))
    run = subprocess.run(
        [tool, str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    report = run.stdout + run.stderr
    errors = [line for line in report.splitlines() if "Error" in line]
    assert not errors, report
    warnings = [line for line in report.splitlines() if line.startswith("Warning")]
    explained = EXPLAINED_WARNINGS[modality]
    unexplained = [w for w in warnings if not any(e in w for e in explained)]
    assert not unexplained, report
