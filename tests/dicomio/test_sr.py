"""SR dose reports: values round-trip, tracking across cycles, validity in real tools."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import highdicom as hd
import pytest

from tests.dicomio.result_records import (
    course_result,
    cycle_result,
    identity,
    source_for_cycle,
)
from tests.part10_bytes import read_back
from tests.peers import require_tool
from theranode.dicomio.part10 import encode
from theranode.dicomio.sr import (
    BUDGET_STATEMENT,
    FIT_SD_STATEMENT,
    LESION_INDICES_ID,
    PRIVATE_CODES,
    PRIVATE_SCHEME,
    VOI_MEASUREMENTS,
    SpectResolution,
    read_sr_report,
    write_course_sr,
    write_cycle_sr,
)
from theranode.dicomio.uids import ResultKind
from theranode.dosimetry.results import DoseUncertainty

METHODS = ["paper", "paper-contrast", "gtm"]


def _cycle_report(
    cycle: int = 1, key: str = "c1", partial_volume: str | None = None
) -> bytes:
    source, _ = source_for_cycle(key=key)
    result = cycle_result(cycle, partial_volume=partial_volume)
    return encode(write_cycle_sr(result, source, identity(cycle=cycle)))


def _course_report(partial_volume: str | None = None) -> bytes:
    source, _ = source_for_cycle()
    course = course_result(partial_volume=partial_volume)
    return encode(write_course_sr(course, source, identity(ResultKind.COURSE)))


def test_every_voi_value_round_trips() -> None:
    result = cycle_result(1)
    report = read_sr_report(read_back(_cycle_report()))
    assert [g.tracking_identifier for g in report.groups] == [
        v.name for v in result.vois
    ]
    for voi in result.vois:
        group = report.group(voi.name, "cycle 1")
        expected = {
            k: getattr(voi, k) for k in VOI_MEASUREMENTS if getattr(voi, k) is not None
        }
        assert group.values == pytest.approx(expected, rel=1e-12)
        assert group.uncertainties == pytest.approx({"mean_gy": voi.mean_gy_sd})
        assert group.evaluations["Dosimetry method"] == "Multi-time-point"
        if voi.fit is not None:
            assert group.evaluations["Time-activity curve model"] == "Monoexponential"
            assert group.texts["UPTAKE"] == [voi.fit.uptake_model]
    assert report.group("lesion 2", "cycle 1").texts["EXCLUDED"] == [
        "volume 1.4 mL below the 2 mL minimum"
    ]
    assert report.group("kidney_left", "cycle 1").texts["NOTE"] == [
        "cyst excluded from the VOI"
    ]
    assert report.warnings == list(result.warnings)


def test_finding_codes_and_laterality() -> None:
    report = read_sr_report(read_back(_cycle_report()))
    assert report.group("liver", "cycle 1").finding_sites == [("10200004", None)]
    assert report.group("kidney_left", "cycle 1").finding_sites == [
        ("64033007", "7771000")
    ]
    assert report.group("kidney_right", "cycle 1").finding_sites == [
        ("64033007", "24028007")
    ]
    assert report.group("marrow L2-L4", "cycle 1").finding_sites == [("14016003", None)]
    lesion = report.group("lesion 1", "cycle 1")
    assert lesion.finding_type == "108369006" and lesion.finding_sites == []


def test_tracking_uid_is_stable_across_cycles_and_distinct_between_rois() -> None:
    first = read_sr_report(read_back(_cycle_report(1, key="c1")))
    second = read_sr_report(
        read_back(_cycle_report(2, key="c2"))
    )  # other study, same patient
    for name in ("liver", "lesion 1"):
        assert (
            first.group(name, "cycle 1").tracking_uid
            == second.group(name, "cycle 2").tracking_uid
        )
    uids = {g.tracking_uid for g in first.groups}
    assert len(uids) == len(first.groups)


def test_course_report_round_trips_cumulative_doses_indices_and_flags() -> None:
    course = course_result()
    report = read_sr_report(read_back(_course_report()))
    for dose in course.cumulative:
        group = report.group(dose.name, "course")
        assert group.values["total_gy"] == pytest.approx(dose.total_gy)
        assert group.uncertainties["total_gy"] == pytest.approx(dose.total_gy_sd)
        if dose.name in course.projected_total_gy:
            assert group.values["projected_total_gy"] == pytest.approx(
                course.projected_total_gy[dose.name]
            )
        for number, value in dose.per_cycle_gy.items():
            assert report.group(dose.name, f"cycle {number}").values[
                "mean_gy"
            ] == pytest.approx(value)
    indices = report.group(LESION_INDICES_ID, "course").values
    assert course.lesion_indices is not None
    assert indices == pytest.approx(
        {
            "n_lesions": 1,
            "mean_total_gy": 57.63,
            "min_total_gy": 57.63,
            "max_total_gy": 57.63,
        }
    )
    assert report.flags == list(course.flags)
    assert report.warnings == [
        f"cycle {c.cycle_number}: {w}" for c in course.cycles for w in c.warnings
    ]


def _assert_budget(group: object, key: str, budget: DoseUncertainty) -> None:
    """``group`` states ``budget`` for its value ``key``: u (k = 1), what it is, dominant,
    components."""
    assert group.uncertainties[key] == pytest.approx(budget.standard_gy, rel=1e-12)  # type: ignore[attr-defined]
    assert group.uncertainty_statements[key] == BUDGET_STATEMENT  # type: ignore[attr-defined]
    assert budget.dominant is not None
    assert group.dominant_uncertainty[key] == budget.dominant.value  # type: ignore[attr-defined]
    expected = {c.value: v for c, v in budget.components.items()}
    assert group.uncertainty_components[key] == pytest.approx(expected, rel=1e-12)  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", METHODS)
def test_budget_partial_volume_method_factor_and_fwhm_round_trip(method: str) -> None:
    result = cycle_result(1, partial_volume=method)
    report = read_sr_report(read_back(_cycle_report(partial_volume=method)))
    for voi in result.vois:
        group = report.group(voi.name, "cycle 1")
        assert voi.uncertainty is not None
        _assert_budget(group, "mean_gy", voi.uncertainty)
        assert group.partial_volume_method == method
        assert group.values["partial_volume_factor"] == pytest.approx(voi.partial_volume_factor)
        assert group.values["recovery_coefficient"] == pytest.approx(voi.recovery_coefficient)
    assert report.partial_volume == {1: method}
    expected = [] if method == "paper" else [
        SpectResolution(1, t, f) for t, f in zip(result.time_points_h, (10.0, 10.0, 10.0, 12.5),
                                                 strict=True)
    ]
    assert report.spect_resolutions == expected
    assert report.administered_activity_mbq == pytest.approx(7400.0)


def test_the_dominant_component_is_the_largest_one() -> None:
    report = read_sr_report(read_back(_cycle_report(partial_volume="gtm")))
    dominant = {g.tracking_identifier: g.dominant_uncertainty["mean_gy"] for g in report.groups}
    assert dominant["liver"] == "calibration"  # 5 % against 1.2 % partial volume
    assert dominant["kidney_left"] == "partial volume"
    assert dominant["lesion 1"] == "volume"


def test_an_older_result_without_budget_states_the_fit_sd_and_the_paper_method() -> None:
    result = cycle_result(1)
    report = read_sr_report(read_back(_cycle_report()))
    for voi in result.vois:
        group = report.group(voi.name, "cycle 1")
        assert group.uncertainties == pytest.approx({"mean_gy": voi.mean_gy_sd})
        assert group.uncertainty_statements == {"mean_gy": FIT_SD_STATEMENT}
        assert group.dominant_uncertainty == {} and group.uncertainty_components == {}
        assert group.partial_volume_method == "paper"
        assert group.values["partial_volume_factor"] == 1.0
    assert report.partial_volume == {1: "paper"}
    assert report.spect_resolutions == []


@pytest.mark.parametrize("method", ["paper", "gtm"])
def test_course_totals_and_lesion_indices_carry_their_budgets(method: str) -> None:
    course = course_result(partial_volume=method)
    report = read_sr_report(read_back(_course_report(method)))
    for dose in course.cumulative:
        assert dose.uncertainty is not None
        _assert_budget(report.group(dose.name, "course"), "total_gy", dose.uncertainty)
    indices = report.group(LESION_INDICES_ID, "course")
    assert course.lesion_indices is not None
    for key, budget in (
        ("mean_total_gy", course.lesion_indices.mean_uncertainty),
        ("min_total_gy", course.lesion_indices.min_uncertainty),
        ("max_total_gy", course.lesion_indices.max_uncertainty),
    ):
        assert budget is not None
        _assert_budget(indices, key, budget)
    assert "n_lesions" not in indices.uncertainties
    assert report.partial_volume == {1: method, 2: method}
    fwhm = {(r.cycle_number, r.elapsed_h): r.fwhm_mm for r in report.spect_resolutions}
    assert fwhm == ({} if method == "paper" else {
        (c, t): f for c in (1, 2) for t, f in zip((4.0, 24.0, 72.0, 192.0),
                                                  (10.0, 10.0, 10.0, 12.5), strict=True)
    })


def test_an_older_course_has_no_budget_and_no_lesion_index_uncertainty() -> None:
    course = course_result()
    report = read_sr_report(read_back(_course_report()))
    for dose in course.cumulative:
        group = report.group(dose.name, "course")
        assert group.uncertainties == pytest.approx({"total_gy": dose.total_gy_sd})
        assert group.uncertainty_statements == {"total_gy": FIT_SD_STATEMENT}
    assert report.group(LESION_INDICES_ID, "course").uncertainties == {}
    assert report.partial_volume == {1: "paper", 2: "paper"}


def test_private_codes_are_distinct_and_fit_a_code_meaning() -> None:
    values = [c.value for c in PRIVATE_CODES]
    assert len(values) == len(set(values))
    assert all(c.scheme_designator == PRIVATE_SCHEME for c in PRIVATE_CODES)
    assert all(len(c.meaning) <= 64 and len(c.value) <= 16 for c in PRIVATE_CODES)


def test_identity_evidence_and_determinism() -> None:
    source, rtss = source_for_cycle()
    data = _cycle_report()
    ds = read_back(data)
    assert (ds.PatientID, ds.StudyInstanceUID, ds.AccessionNumber) == (
        source.patient_id,
        source.study_instance_uid,
        source.accession_number,
    )
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    evidence = {uid for _, _, uid, _ in sr.get_evidence()}
    assert evidence == {ref.sop_instance_uid for ref in source.all_instances}
    assert rtss.SOPInstanceUID in evidence
    assert "PertinentOtherEvidenceSequence" in ds  # the SPECT of another study
    assert ds.ContentDate == "20240301" and ds.InstanceCreationTime.startswith("143005")
    assert ds.SeriesDescription == "theranode Lu-177 AD report cycle 1 v1"
    assert _cycle_report() == data


def _run(tool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(tool), str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.peer
@pytest.mark.parametrize("method", [None, *METHODS])
@pytest.mark.parametrize("kind", ["cycle", "course"])
def test_dciodvfy_and_dsr2xml_accept_the_report(
    tmp_path: Path, kind: str, method: str | None
) -> None:
    path = tmp_path / "sr.dcm"
    path.write_bytes(_cycle_report(partial_volume=method) if kind == "cycle"
                     else _course_report(method))
    check = _run("dciodvfy", path)
    report = check.stdout + check.stderr
    assert "Error" not in report, report
    warnings = [line for line in report.splitlines() if line.startswith("Warning")]
    assert all("99THERANODE" in w for w in warnings), warnings
    converted = _run("dsr2xml", path)
    assert converted.returncode == 0, converted.stderr
    root = ET.fromstring(converted.stdout)
    values = {
        float(v.text) for v in root.iter("value") if v.text and _is_number(v.text)
    }
    expected = 1.0812 if kind == "cycle" else 57.63
    assert expected in values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_non_ascii_method_names_and_notes_survive_in_utf8() -> None:
    from dataclasses import replace

    from theranode.dosimetry.results import DoseMethod

    result = cycle_result(3)
    first = replace(result.vois[0], method=DoseMethod.HANSCHEID,
                    notes=("λ_eff ≥ λ_phys enforced",))
    result = replace(result, method=DoseMethod.HANSCHEID, vois=(first, *result.vois[1:]))
    source, _ = source_for_cycle("c3")
    ds = read_back(encode(write_cycle_sr(result, source, identity(ResultKind.CYCLE, 3))))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    group = read_sr_report(ds).group(first.name, "cycle 3")
    assert "λ_eff ≥ λ_phys enforced" in group.texts["NOTE"]
