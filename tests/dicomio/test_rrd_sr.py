"""Radiopharmaceutical Radiation Dose SR: organ doses a dose registry can read.

The content tree is walked here with plain pydicom, independently of the writer:
every code is compared with the PS3.16 template row it fills (TID 10021, 10022,
10023), every organ dose with the cycle result's mean absorbed dose in mGy.
"""

from __future__ import annotations

import dataclasses
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.dicomio.result_records import (
    SHAPE,
    cycle_result,
    identity,
    reference_ct,
    source_for_cycle,
    spect_elsewhere,
)
from tests.part10_bytes import read_back
from tests.peers import OrthancPeer, require_tool
from theranode.config.schema import Destination
from theranode.dicomio.errors import MissingAttributeError
from theranode.dicomio.part10 import encode
from theranode.dicomio.rrd_sr import (
    RRD_SR_STORAGE,
    Administration,
    administration_from_headers,
    write_rrd_sr,
)
from theranode.dicomio.uids import ResultKind
from theranode.dosimetry.results import CycleResult, VoiKind
from theranode.service.deliver.sender import RESULT_SOP_CLASSES, DicomSender, SendState

INJECTED = datetime(2024, 2, 27, 9, 30)
#: Lu-177 half-life, 6.647 d (ICRP-107), in seconds.
LU177_HALF_LIFE_S = 6.647 * 86400.0

# (code value, scheme) of every concept the templates prescribe, from PS3.16.
REPORT = ("113500", "DCM")
ASSOCIATED_PROCEDURE, HAS_INTENT = ("363589002", "SCT"), ("363703001", "SCT")
ADMINISTRATION = ("113502", "DCM")
AGENT, RADIONUCLIDE, HALF_LIFE = ("349358000", "SCT"), ("89457008", "SCT"), ("304283002", "SCT")
EVENT_UID, START, ACTIVITY = ("113503", "DCM"), ("123003", "DCM"), ("113507", "DCM")
ROUTE, SITE_OF = ("410675002", "SCT"), ("272737002", "SCT")
ORGAN_DOSE_INFORMATION, FINDING_SITE = ("113517", "DCM"), ("363698007", "SCT")
LATERALITY, ORGAN_DOSE = ("272741003", "SCT"), ("113518", "DCM")
REFERENCE_AUTHORITY, COMMENT = ("121406", "DCM"), ("121106", "DCM")
UPPER, LOWER = ("371886008", "SCT"), ("371885007", "SCT")
PERSON_NAME, PERSON_ROLE = ("113870", "DCM"), ("113875", "DCM")

#: What each organ VOI of the fixture must become: (finding site, laterality).
EXPECTED_SITES = {
    "liver": (("10200004", "SCT"), None),
    "kidney_left": (("64033007", "SCT"), ("7771000", "SCT")),
    "kidney_right": (("64033007", "SCT"), ("24028007", "SCT")),
    "marrow L2-L4": (("14016003", "SCT"), None),
}


# -- an independent reader: plain pydicom over the content tree --------------------
def _code(seq_item: Dataset) -> tuple[str, str]:
    return str(seq_item.CodeValue), str(seq_item.CodingSchemeDesignator)


def concept(item: Dataset) -> tuple[str, str]:
    return _code(item.ConceptNameCodeSequence[0])


def children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def only(item: Dataset, name: tuple[str, str]) -> Dataset:
    found = [c for c in children(item) if concept(c) == name]
    assert len(found) == 1, (name, [concept(c) for c in children(item)])
    return found[0]


def number(item: Dataset) -> tuple[float, tuple[str, str]]:
    measured = item.MeasuredValueSequence[0]
    return float(measured.NumericValue), _code(measured.MeasurementUnitsCodeSequence[0])


def code_value(item: Dataset) -> tuple[str, str]:
    return _code(item.ConceptCodeSequence[0])


@dataclasses.dataclass
class OrganEntry:
    site: tuple[str, str]
    laterality: tuple[str, str] | None
    dose_mgy: float
    unit: tuple[str, str]
    relationship: str
    authority: str
    upper_mgy: float | None


def organ_entries(administration: Dataset) -> list[OrganEntry]:
    entries = []
    for item in children(administration):
        if concept(item) != ORGAN_DOSE_INFORMATION:
            continue
        assert item.ValueType == "CONTAINER"
        lat = [code_value(c) for c in children(item) if concept(c) == LATERALITY]
        dose = only(item, ORGAN_DOSE)
        value, unit = number(dose)
        uppers = [number(c)[0] for c in children(dose) if concept(c) == UPPER]
        entries.append(OrganEntry(
            site=code_value(only(item, FINDING_SITE)),
            laterality=lat[0] if lat else None,
            dose_mgy=value,
            unit=unit,
            relationship=str(dose.RelationshipType),
            authority=str(only(dose, REFERENCE_AUTHORITY).TextValue),
            upper_mgy=uppers[0] if uppers else None,
        ))
    return entries


# -- fixtures ----------------------------------------------------------------------
def _report(
    result: CycleResult | None = None, administration: Administration | None = None,
    version: int = 1,
) -> Dataset:
    source, _ = source_for_cycle()
    ds = write_rrd_sr(
        result if result is not None else cycle_result(1, partial_volume="gtm"),
        source,
        dataclasses.replace(identity(), version=version),
        administration=administration or Administration(INJECTED),
    )
    return read_back(encode(ds))


def _lesions_only() -> CycleResult:
    result = cycle_result(1)
    lesions = tuple(v for v in result.vois if v.kind is VoiKind.LESION)
    return dataclasses.replace(result, vois=lesions)


# -- the content ---------------------------------------------------------------------
def test_every_organ_dose_is_the_results_mean_absorbed_dose_in_mgy() -> None:
    result = cycle_result(1, partial_volume="gtm")
    ds = _report(result)
    entries = organ_entries(only(ds, ADMINISTRATION))
    organs = [v for v in result.vois if v.kind is not VoiKind.LESION and not v.excluded]
    assert [(e.site, e.laterality) for e in entries] == [EXPECTED_SITES[v.name] for v in organs]
    for entry, voi in zip(entries, organs, strict=True):
        assert entry.dose_mgy == pytest.approx(1000.0 * voi.mean_gy, rel=1e-12)
        assert entry.unit == ("mGy", "UCUM")
        assert entry.relationship == "CONTAINS"
        assert voi.uncertainty is not None
        assert entry.upper_mgy == pytest.approx(1000.0 * voi.uncertainty.standard_gy, rel=1e-9)
        assert "post-therapy quantitative SPECT/CT" in entry.authority
        assert "Hebert et al., J Nucl Med 2024;65:923-930" in entry.authority


def test_lesions_are_not_organ_doses_and_no_private_code_is_used() -> None:
    ds = _report()
    sites = {e.site for e in organ_entries(only(ds, ADMINISTRATION))}
    assert ("108369006", "SCT") not in sites and ("52988006", "SCT") not in sites
    schemes = set()

    def walk(item: Dataset) -> None:
        for seq in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            schemes.update(c.CodingSchemeDesignator for c in item.get(seq, []))
        for child in children(item):
            walk(child)

    walk(ds)
    assert schemes <= {"DCM", "SCT", "UCUM"}
    assert "CodingSchemeIdentificationSequence" not in ds


def test_root_and_procedure_follow_tid_10021() -> None:
    ds = _report()
    assert ds.SOPClassUID == RRD_SR_STORAGE
    assert (ds.ValueType, concept(ds), ds.ContinuityOfContent) == ("CONTAINER", REPORT,
                                                                   "SEPARATE")
    template = ds.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "10021")
    assert [concept(c) for c in children(ds)] == [ASSOCIATED_PROCEDURE, ADMINISTRATION, COMMENT]
    procedure = only(ds, ASSOCIATED_PROCEDURE)
    assert procedure.RelationshipType == "HAS CONCEPT MOD"
    assert code_value(procedure) == ("399315003", "SCT")  # Radionuclide therapy
    assert code_value(only(procedure, HAS_INTENT)) == ("262202000", "SCT")  # Therapeutic
    comment = str(only(ds, COMMENT).TextValue)
    assert "not a pre-administration estimate" in comment
    assert "4, 24, 72, 192 h" in comment
    assert "'lesion" not in comment  # lesions are not organs left out


def test_administration_follows_tid_10022_rows_in_order() -> None:
    ds = _report()
    administration = only(ds, ADMINISTRATION)
    order = [concept(c) for c in children(administration)]
    assert order == [AGENT, EVENT_UID, START, ACTIVITY, *[ORGAN_DOSE_INFORMATION] * 4, ROUTE,
                     PERSON_NAME]
    agent = only(administration, AGENT)
    assert code_value(agent) == ("781259000", "SCT")  # Lutetium-177 DOTATATE, CID 25
    assert code_value(only(agent, RADIONUCLIDE)) == ("447553000", "SCT")  # CID 18
    half_life, unit = number(only(agent, HALF_LIFE))
    assert unit == ("s", "UCUM")
    assert half_life == pytest.approx(LU177_HALF_LIFE_S, rel=2e-4)
    assert number(only(administration, ACTIVITY)) == (7400.0, ("MBq", "UCUM"))
    assert only(administration, START).DateTime == "20240227093000"
    route = only(administration, ROUTE)
    assert code_value(route) == ("47625008", "SCT")  # Intravenous route, CID 11
    assert code_value(only(route, SITE_OF)) == ("103386002", "SCT")  # Via vein, CID 3746
    person = only(administration, PERSON_NAME)  # TID 1020, nobody named: "Unknown"
    assert (person.ValueType, person.PersonName.family_name) == ("PNAME", "Unknown")
    assert code_value(only(person, PERSON_ROLE)) == ("113851", "DCM")  # Irradiation Administering


def test_the_person_who_gave_the_injection_is_named_when_known() -> None:
    named = Administration(INJECTED, administered_by="Curie^Marie")
    person = only(only(_report(administration=named), ADMINISTRATION), PERSON_NAME)
    assert str(person.PersonName) == "Curie^Marie"


def test_event_uid_of_the_spect_is_kept_and_a_derived_one_is_stable() -> None:
    spect = spect_elsewhere()
    item = Dataset()
    item.RadiopharmaceuticalStartDateTime = "20240227093000"
    item.RadionuclideTotalDose = "7400"
    item.RadiopharmaceuticalAdministrationEventUID = "1.2.826.0.1.3680043.10.1.77"
    spect.RadiopharmaceuticalInformationSequence = [item]
    administration = administration_from_headers([spect], INJECTED)
    assert administration == Administration(INJECTED, "1.2.826.0.1.3680043.10.1.77")
    kept = only(only(_report(administration=administration), ADMINISTRATION), EVENT_UID)
    assert kept.UID == "1.2.826.0.1.3680043.10.1.77"

    assert administration_from_headers([spect_elsewhere()], INJECTED).event_uid is None
    v1 = only(only(_report(version=1), ADMINISTRATION), EVENT_UID).UID
    v2 = only(only(_report(version=2), ADMINISTRATION), EVENT_UID).UID
    later = Administration(datetime(2024, 4, 23, 9, 30))
    other = only(only(_report(administration=later), ADMINISTRATION), EVENT_UID).UID
    assert v1 == v2 != other


def test_document_is_filed_in_its_own_series_of_the_reference_ct_study() -> None:
    source, _ = source_for_cycle()
    ds = _report()
    assert ds.StudyInstanceUID == source.study_instance_uid
    assert (ds.Modality, ds.SeriesNumber) == ("SR", 9401)
    assert ds.SeriesDescription == "theranode Lu-177 organ dose RRD SR cycle 1 v1"
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert ds.ContentDate == "20240301" and ds.InstanceCreationTime.startswith("143005")
    other = ds.PertinentOtherEvidenceSequence[0]  # the SPECT of another study
    assert other.StudyInstanceUID == spect_elsewhere().StudyInstanceUID
    assert encode(_report()) == encode(ds)  # same inputs, same bytes


def test_a_result_without_organ_vois_gives_a_report_of_the_administration_only() -> None:
    ds = _report(_lesions_only())
    administration = only(ds, ADMINISTRATION)
    assert organ_entries(administration) == []
    assert number(only(administration, ACTIVITY))[0] == 7400.0
    assert [concept(c) for c in children(administration)][-2:] == [ROUTE, PERSON_NAME]


def test_excluded_and_uncoded_organ_vois_are_left_out_and_named() -> None:
    result = cycle_result(1)
    liver = dataclasses.replace(result.vois[0], excluded=True, exclusion_reason="motion")
    stomach = dataclasses.replace(result.vois[0], name="stomach", organ=None)
    result = dataclasses.replace(result, vois=(liver, stomach, *result.vois[1:]))
    ds = _report(result)
    sites = [e.site for e in organ_entries(only(ds, ADMINISTRATION))]
    assert ("10200004", "SCT") not in sites and len(sites) == 3
    comment = str(only(ds, COMMENT).TextValue)
    assert "'liver' (excluded)" in comment and "'stomach'" in comment


def test_uncertainty_without_a_budget_is_the_fit_sd_and_said_so() -> None:
    result = cycle_result(1)  # an older result: no budget
    entries = organ_entries(only(_report(result), ADMINISTRATION))
    assert entries[0].upper_mgy == pytest.approx(1000.0 * result.vois[0].mean_gy_sd)


def test_without_administered_activity_the_error_says_what_to_do() -> None:
    result = dataclasses.replace(cycle_result(1), administered_activity_mbq=None)
    with pytest.raises(MissingAttributeError, match="RadionuclideTotalDose"):
        _report(result)


def test_a_course_identity_is_refused() -> None:
    source, _ = source_for_cycle()
    with pytest.raises(ValueError, match="cycle result identity"):
        write_rrd_sr(cycle_result(1), source, identity(ResultKind.COURSE),
                     administration=Administration(INJECTED))


# -- real tools ------------------------------------------------------------------------
def _run(tool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool(tool), str(path)], check=False, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.peer
@pytest.mark.parametrize("case", ["organs", "lesions only"])
def test_dciodvfy_finds_neither_error_nor_warning(tmp_path: Path, case: str) -> None:
    path = tmp_path / "rrd.dcm"
    path.write_bytes(encode(_report(_lesions_only() if case == "lesions only" else None)))
    check = _run("dciodvfy", path)
    report = check.stdout + check.stderr
    assert "RadiopharmaceuticalRadiationDoseSR" in report, report  # the IOD it checked
    assert "Error" not in report and "Warning" not in report, report


@pytest.mark.peer
def test_dsrdump_reads_the_tree_and_prints_the_organ_doses(tmp_path: Path) -> None:
    path = tmp_path / "rrd.dcm"
    path.write_bytes(encode(_report()))
    dump = _run("dsrdump", path)
    assert dump.returncode == 0, dump.stderr
    assert not [line for line in dump.stderr.splitlines() if line.startswith(("E:", "F:"))]
    assert "Radiopharmaceutical Radiation Dose SR Document" in dump.stdout
    doses = [line for line in dump.stdout.splitlines() if '"Organ Dose"' in line]
    assert [d.split("=")[1].split()[0] for d in doses] == [
        '"1081.2"', '"2731.0"', '"2731.0"', '"291.0"'
    ]
    assert all("(mGy,UCUM" in d for d in doses)
    assert '(781259000,SCT,"Lutetium^177^ DOTATATE")' in dump.stdout


@pytest.mark.peer
def test_the_node_delivers_it_to_orthanc_over_dicom(tmp_path: Path,
                                                   orthanc: OrthancPeer) -> None:
    assert RRD_SR_STORAGE in RESULT_SOP_CLASSES
    source, _ = source_for_cycle()
    ct = orthanc.post("/instances", encode(_with_meta(reference_ct(SHAPE[0])[0])))
    path = tmp_path / "rrd.dcm"
    path.write_bytes(encode(_report()))
    destination = Destination(name="pacs", ae_title=orthanc.aet, host="127.0.0.1",
                              port=orthanc.dicom_port)
    [sent] = DicomSender(destination, "THERANODE").send([path])
    assert sent.state is SendState.SENT, sent
    instances: list[dict[str, Any]] = orthanc.get(f"/studies/{ct['ParentStudy']}/instances")
    tags = [orthanc.get(f"/instances/{i['ID']}/simplified-tags") for i in instances]
    [stored] = [t for t in tags if t["SOPClassUID"] == RRD_SR_STORAGE]
    assert stored["StudyInstanceUID"] == source.study_instance_uid


def _with_meta(ds: Dataset) -> Dataset:
    from theranode.dicomio.part10 import file_meta

    ds.file_meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    return ds



def test_both_kidneys_in_one_voi_are_bilateral_and_spleen_has_no_laterality() -> None:
    from theranode.dosimetry.results import Organ

    result = cycle_result(1)
    kidneys = dataclasses.replace(result.vois[1], name="kidneys", organ=Organ.KIDNEYS)
    spleen = dataclasses.replace(result.vois[0], name="spleen", organ=Organ.SPLEEN)
    entries = organ_entries(only(_report(dataclasses.replace(result, vois=(kidneys, spleen))),
                                 ADMINISTRATION))
    assert [(e.site, e.laterality) for e in entries] == [
        (("64033007", "SCT"), ("51440002", "SCT")),  # CID 244 "Bilateral", TID 10023 row 3
        (("78961009", "SCT"), None),
    ]


def test_the_demo_receiver_accepts_it(tmp_path: Path) -> None:
    from tests.peers import free_port
    from theranode.service.cli.demo_receiver import Receiver

    ds = _report()
    path = tmp_path / "rrd.dcm"
    path.write_bytes(encode(ds))
    port = free_port()
    receiver = Receiver("THERANODE-DEMO", port, tmp_path)
    try:
        destination = Destination(name="demo", ae_title="THERANODE-DEMO", host="127.0.0.1",
                                  port=port)
        [sent] = DicomSender(destination, "THERANODE").send([path])
    finally:
        receiver.stop()
    assert sent.state is SendState.SENT, sent
    assert (tmp_path / f"SR-{ds.SOPInstanceUID}.dcm").exists()
