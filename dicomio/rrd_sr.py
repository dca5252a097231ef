"""Radiopharmaceutical Radiation Dose SR of a cycle, for dose registries.

The TID 1500 report (:mod:`theranode.dicomio.sr`) holds everything theranode
computed. Dose registries of the IHE REM-NM profile read another object: the
Radiopharmaceutical Radiation Dose SR (DICOM Supplement 159), whose root
template TID 10021 records one administration (TID 10022) with the absorbed
dose of each organ (TID 10023). :func:`write_rrd_sr` writes that object for
one cycle:

* TID 10021: Associated Procedure "Radionuclide therapy" with Therapeutic
  Intent, one administration and a Comment saying what the doses are.
* TID 10022: Lu-177 DOTATATE labelled with Lu-177 (with its physical
  half-life), the administration event UID, the injection date-time, the
  administered activity in MBq, the intravenous route (the route of the
  product, via a vein) and the person who gave it (``Unknown`` unless told).
* TID 10023, one per organ VOI that is not excluded (liver, kidneys with
  their laterality, spleen, bone marrow): finding site, laterality for the
  kidneys, and the mean absorbed dose in mGy with the method as its Reference
  Authority (text) and, beside it, its standard uncertainty (k = 1) as TID
  310 upper and lower uncertainty with what it is (the template is
  extensible). Organ mass is left out: theranode measures VOI volumes, not
  masses.

These are the mean absorbed doses measured after the administration, from
quantitative SPECT/CT at several time points (or one, scaled), per cycle; not
the pre-administration estimates from reference phantoms that the template was
first written for. Lesions are not organs and stay in the TID 1500 report only.
No private code is used, so a registry needs nothing beyond PS3.16.

References
----------
DICOM PS3.3 A.35.14 (Radiopharmaceutical Radiation Dose SR IOD); PS3.16 TID
10021 (Radiopharmaceutical Radiation Dose), TID 10022 (Radiopharmaceutical
Administration Event Data), TID 10023 (Organ Dose), TID 310 (Measurement
Properties), CID 11 (Administration Route), CID 18 (Radiopharmaceutical
Isotope), CID 25 (Radiopharmaceutical), CID 244 (Laterality), CID 3629
(Procedure Intent), CID 3746 (Percutaneous Entry Site), CID 10044
(Radiosensitive Organ); DICOM Supplement 159; IHE Radiology Radiation Exposure
Monitoring for Nuclear Medicine (REM-NM).
Dosimetry: Hebert K et al., J Nucl Med 2024;65:923-930. Uncertainty: Gear JI
et al., Eur J Nucl Med Mol Imaging 2018;45:2456-2474; JCGM 100:2008.
Half-life: ICRP Publication 107 (:mod:`theranode.dosimetry.radionuclides`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from theranode.dicomio.errors import MissingAttributeError
from theranode.dicomio.headers import injection
from theranode.dicomio.part10 import file_meta, in_tag_order, set_creation, set_equipment
from theranode.dicomio.source import InstanceReference, SourceContext, patient_study_dataset
from theranode.dicomio.sr import (
    ADMINISTERED_ACTIVITY,
    BONE_MARROW,
    BUDGET_STATEMENT,
    FIT_SD_STATEMENT,
    KIDNEY,
    LEFT,
    LIVER,
    LOWER_UNCERTAINTY,
    MEGABECQUEREL,
    RIGHT,
    SPLEEN,
    UNCERTAINTY_METHOD,
    UPPER_UNCERTAINTY,
    Spread,
    require_kind,
)
from theranode.dicomio.uids import (
    OutputObject,
    ResultIdentity,
    ResultKind,
    derive_uid,
    device_uid,
    output_uids,
)
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data
from theranode.dosimetry.results import CycleResult, Organ, VoiDose, VoiKind

logger = logging.getLogger(__name__)

#: Radiopharmaceutical Radiation Dose SR Storage (PS3.4 B.5).
RRD_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.68"

# -- codes, each as its template row or context group has it -----------------
#: TID 10021 row 1.
REPORT = codes.DCM.RadiopharmaceuticalRadiationDoseReport  # DCM 113500
#: TID 10021 rows 2-3: the procedure performed and its intent (CID 3629).
ASSOCIATED_PROCEDURE = Code("363589002", "SCT", "Associated Procedure")
RADIONUCLIDE_THERAPY = Code("399315003", "SCT", "Radionuclide therapy")
HAS_INTENT = Code("363703001", "SCT", "Has Intent")
THERAPEUTIC_INTENT = codes.SCT.TherapeuticIntent  # SCT 262202000
#: TID 10021 row 6.
COMMENT = codes.DCM.Comment  # DCM 121106
#: TID 10022 rows 1-4: the administration, the agent (CID 25) and its
#: radionuclide (CID 18) with the physical half-life in seconds.
ADMINISTRATION = codes.DCM.RadiopharmaceuticalAdministration  # DCM 113502
RADIOPHARMACEUTICAL_AGENT = Code("349358000", "SCT", "Radiopharmaceutical agent")
LU177_DOTATATE = Code("781259000", "SCT", "Lutetium^177^ DOTATATE")
RADIONUCLIDE = Code("89457008", "SCT", "Radionuclide")
LU177 = Code("447553000", "SCT", "^177^Lutetium")
HALF_LIFE = Code("304283002", "SCT", "Radionuclide Half Life")
SECONDS = Code("s", "UCUM", "seconds")
#: TID 10022 rows 6, 9 and 11 (row 11 is ``ADMINISTERED_ACTIVITY`` in MBq).
EVENT_UID = codes.DCM.RadiopharmaceuticalAdministrationEventUID  # DCM 113503
START = Code("123003", "DCM", "Radiopharmaceutical Start DateTime")
#: TID 10022 rows 20-21: route (CID 11) and, for an intravenous route, the
#: entry site (CID 3746).
ROUTE = Code("410675002", "SCT", "Route of administration")
INTRAVENOUS = codes.SCT.IntravenousRoute  # SCT 47625008
SITE_OF = Code("272737002", "SCT", "Site of")
VIA_VEIN = codes.SCT.ViaVein  # SCT 103386002
#: TID 10022 row 23: TID 1020 Person Participant with $PersonProcedureRole
#: = (113851, DCM, "Irradiation Administering").
PERSON_NAME = codes.DCM.PersonName  # DCM 113870
PERSON_ROLE = codes.DCM.PersonRoleInProcedure  # DCM 113875
IRRADIATION_ADMINISTERING = codes.DCM.IrradiationAdministering  # DCM 113851
#: Person Name when nobody told theranode who gave the injection: the word as a
#: family name component, with the caret PS3.5 6.2.1.2 asks of a one-component name.
UNKNOWN_PERSON = "Unknown^"
#: TID 10023 rows 1-3, 6-8; laterality from CID 244 ("Bilateral" for both kidneys).
ORGAN_DOSE_INFORMATION = codes.DCM.OrganDoseInformation  # DCM 113517
FINDING_SITE = codes.SCT.FindingSite  # SCT 363698007
LATERALITY = codes.SCT.Laterality  # SCT 272741003
BILATERAL = Code("51440002", "SCT", "Bilateral")
ORGAN_DOSE = codes.DCM.OrganDose  # DCM 113518
MILLIGRAY = Code("mGy", "UCUM", "mGy")
REFERENCE_AUTHORITY = codes.DCM.ReferenceAuthority  # DCM 121406

#: Each organ of the results as its CID 10044 site and CID 244 laterality.
ORGAN_SITES: dict[Organ, tuple[Code, Code | None]] = {
    Organ.LIVER: (LIVER, None),
    Organ.KIDNEY_LEFT: (KIDNEY, LEFT),
    Organ.KIDNEY_RIGHT: (KIDNEY, RIGHT),
    Organ.KIDNEYS: (KIDNEY, BILATERAL),
    Organ.SPLEEN: (SPLEEN, None),
    Organ.BONE_MARROW: (BONE_MARROW, None),
}

PAPER = "Hebert et al., J Nucl Med 2024;65:923-930"


@dataclass(frozen=True)
class Administration:
    """The radiopharmaceutical administration a cycle's doses follow.

    Parameters
    ----------
    start:
        Injection date-time (Radiopharmaceutical Start DateTime), as the
        grouping of the cycle established it.
    event_uid:
        Radiopharmaceutical Administration Event UID of the SPECT headers, when
        they carry one. Without it theranode derives one from the patient and
        the start date-time, the same for every version of the cycle's result.
    administered_by:
        Name of the person who gave the injection (DICOM PN, ``Family^Given``),
        when known; the report says ``Unknown`` otherwise.
    """

    start: datetime
    event_uid: str | None = None
    administered_by: str = ""


def administration_from_headers(spect: Iterable[Dataset], start: datetime) -> Administration:
    """The administration at ``start`` with the event UID the SPECT headers carry.

    The first valid Radiopharmaceutical Administration Event UID found is used;
    when the headers disagree the others are logged (the grouping keeps one
    administration per cycle, so that means a vendor wrote several).
    """
    uids: list[str] = []
    for ds in spect:
        found = injection(ds)
        if found is not None and found.event_uid and found.event_uid not in uids:
            uids.append(found.event_uid)
    if len(uids) > 1:
        logger.warning(
            "The cycle's SPECT headers name %d administration event UIDs (%s); the RRD SR "
            "states the first", len(uids), ", ".join(uids)
        )
    return Administration(start=start, event_uid=uids[0] if uids else None)


def event_uid(administration: Administration, source: SourceContext) -> str:
    """The administration's event UID, derived from patient and start when the headers had none."""
    if administration.event_uid:
        return administration.event_uid
    return derive_uid("administration", source.patient_key, administration.start.isoformat())


# -- TID 10023 -------------------------------------------------------------------
def organ_site(voi: VoiDose) -> tuple[Code, Code | None] | None:
    """Finding site and laterality of an organ VOI (``None`` for lesions and unknown organs).

    A marrow VOI (the paper's L2-L4 trabecular marrow) is bone marrow whether or
    not its name was matched to :attr:`Organ.BONE_MARROW`.
    """
    if voi.kind is VoiKind.LESION:
        return None
    if voi.organ is not None:
        return ORGAN_SITES[voi.organ]
    if voi.kind is VoiKind.MARROW:
        return ORGAN_SITES[Organ.BONE_MARROW]
    return None


def reference_authority(voi: VoiDose, software_version: str) -> str:
    """TID 10023 row 8: how the dose was obtained, as text."""
    return (
        f"theranode {software_version}: mean absorbed dose measured after the "
        f"administration by post-therapy quantitative SPECT/CT voxel dosimetry, "
        f"{voi.method.value} ({PAPER})"
    )


def _uncertainty_items(voi: VoiDose) -> list[Any]:
    """The standard uncertainty (k = 1) in mGy as TID 310 rows, and what it is."""
    spread = Spread.of(voi.uncertainty, voi.mean_gy_sd)
    if spread is None:
        return []
    items: list[Any] = [
        hd.sr.NumContentItem(
            name=name, value=1000.0 * spread.standard, unit=MILLIGRAY,
            relationship_type="HAS PROPERTIES",
        )
        for name in (UPPER_UNCERTAINTY, LOWER_UNCERTAINTY)
    ]
    statement = BUDGET_STATEMENT if spread.budget is not None else FIT_SD_STATEMENT
    items.append(hd.sr.TextContentItem(
        name=UNCERTAINTY_METHOD, value=statement, relationship_type="HAS PROPERTIES"
    ))
    return items


def organ_dose_item(voi: VoiDose, site: tuple[Code, Code | None], software_version: str) -> Any:
    """One TID 10023 Organ Dose container (mean absorbed dose in mGy)."""
    organ, laterality = site
    items: list[Any] = [
        hd.sr.CodeContentItem(name=FINDING_SITE, value=organ, relationship_type="HAS CONCEPT MOD")
    ]
    if laterality is not None:
        items.append(hd.sr.CodeContentItem(
            name=LATERALITY, value=laterality, relationship_type="HAS CONCEPT MOD"
        ))
    dose = hd.sr.NumContentItem(
        name=ORGAN_DOSE, value=1000.0 * voi.mean_gy, unit=MILLIGRAY, relationship_type="CONTAINS"
    )
    dose.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(
            name=REFERENCE_AUTHORITY, value=reference_authority(voi, software_version),
            relationship_type="HAS PROPERTIES",
        ),
        *_uncertainty_items(voi),
    ])
    items.append(dose)
    container = hd.sr.ContainerContentItem(
        name=ORGAN_DOSE_INFORMATION, is_content_continuous=False, relationship_type="CONTAINS"
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def organ_vois(result: CycleResult) -> tuple[list[tuple[VoiDose, tuple[Code, Code | None]]],
                                             list[VoiDose]]:
    """The VOIs that become TID 10023 entries (with their sites) and the organ-like VOIs left out.

    Lesions are not listed in either; excluded VOIs and organs theranode cannot
    code are left out.
    """
    reported, left_out = [], []
    for voi in result.vois:
        site = organ_site(voi)
        if voi.kind is VoiKind.LESION:
            continue
        if site is None or voi.excluded:
            left_out.append(voi)
            continue
        reported.append((voi, site))
    return reported, left_out


# -- TID 10022 ---------------------------------------------------------------------
def _agent_item() -> Any:
    half_life_s = nuclear_data(Radionuclide.LU177).half_life_h * 3600.0
    agent = hd.sr.CodeContentItem(
        name=RADIOPHARMACEUTICAL_AGENT, value=LU177_DOTATATE, relationship_type="CONTAINS"
    )
    agent.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(name=RADIONUCLIDE, value=LU177, relationship_type="HAS PROPERTIES"),
        hd.sr.NumContentItem(
            name=HALF_LIFE, value=half_life_s, unit=SECONDS, relationship_type="HAS PROPERTIES"
        ),
    ])
    return agent


def _route_item() -> Any:
    route = hd.sr.CodeContentItem(name=ROUTE, value=INTRAVENOUS, relationship_type="CONTAINS")
    route.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(name=SITE_OF, value=VIA_VEIN, relationship_type="HAS PROPERTIES")
    ])
    return route


def _person_item(administration: Administration) -> Any:
    """TID 1020 rows 1-2: who gave the injection, in the role Irradiation Administering."""
    person = hd.sr.PnameContentItem(
        name=PERSON_NAME, value=administration.administered_by or UNKNOWN_PERSON,
        relationship_type="CONTAINS",
    )
    person.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(
            name=PERSON_ROLE, value=IRRADIATION_ADMINISTERING, relationship_type="HAS PROPERTIES"
        )
    ])
    return person


def administration_item(
    result: CycleResult,
    administration: Administration,
    source: SourceContext,
    organs: Sequence[Any],
) -> Any:
    """The TID 10022 container, rows in template order (rows 2, 6, 9, 11, 19, 20, 23)."""
    activity_mbq = result.administered_activity_mbq
    if activity_mbq is None:
        raise MissingAttributeError(
            f"Cycle {result.cycle_number}'s result states no administered activity, which a "
            "Radiopharmaceutical Radiation Dose SR must carry (TID 10022 row 11). Send a SPECT "
            "whose RadiopharmaceuticalInformationSequence holds RadionuclideTotalDose and "
            "reprocess, or turn reports.radiopharmaceutical_dose_sr off."
        )
    container = hd.sr.ContainerContentItem(
        name=ADMINISTRATION, is_content_continuous=False, relationship_type="CONTAINS"
    )
    container.ContentSequence = hd.sr.ContentSequence([
        _agent_item(),
        hd.sr.UIDRefContentItem(
            name=EVENT_UID, value=event_uid(administration, source), relationship_type="CONTAINS"
        ),
        hd.sr.DateTimeContentItem(
            name=START, value=administration.start, relationship_type="CONTAINS"
        ),
        hd.sr.NumContentItem(
            name=ADMINISTERED_ACTIVITY, value=activity_mbq, unit=MEGABECQUEREL,
            relationship_type="CONTAINS",
        ),
        *organs,
        _route_item(),
        _person_item(administration),
    ])
    return container


# -- TID 10021 ---------------------------------------------------------------------
def report_comment(result: CycleResult, left_out: Sequence[VoiDose]) -> str:
    """TID 10021 row 6: what the doses are, and which VOIs are not listed."""
    hours = ", ".join(f"{t:g}" for t in result.time_points_h)
    text = (
        f"Cycle {result.cycle_number}: mean absorbed doses to organs measured after the "
        f"administration (post-therapy quantitative SPECT/CT at {hours} h after injection, "
        f"{result.method.value}), not a pre-administration estimate; per cycle, not "
        f"cumulative. Lesion doses, dose statistics and uncertainty budgets are in the "
        f"TID 1500 dose report of the same result."
    )
    if left_out:
        names = ", ".join(f"{v.name!r}" + (" (excluded)" if v.excluded else "")
                          for v in left_out)
        text += f" VOIs not listed as organs: {names}."
    return text


def report_content(
    result: CycleResult, administration: Administration, source: SourceContext,
    software_version: str,
) -> Any:
    """The TID 10021 root container with everything under it."""
    reported, left_out = organ_vois(result)
    organs = [organ_dose_item(voi, site, software_version) for voi, site in reported]
    procedure = hd.sr.CodeContentItem(
        name=ASSOCIATED_PROCEDURE, value=RADIONUCLIDE_THERAPY, relationship_type="HAS CONCEPT MOD"
    )
    procedure.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(
            name=HAS_INTENT, value=THERAPEUTIC_INTENT, relationship_type="HAS CONCEPT MOD"
        )
    ])
    root = hd.sr.ContainerContentItem(
        name=REPORT, is_content_continuous=False, template_id="10021"
    )
    root.ContentSequence = hd.sr.ContentSequence([
        procedure,
        administration_item(result, administration, source, organs),
        hd.sr.TextContentItem(
            name=COMMENT, value=report_comment(result, left_out), relationship_type="CONTAINS"
        ),
    ])
    if not reported:
        logger.warning(
            "RRD SR of cycle %d lists no organ dose: the result has no organ VOI",
            result.cycle_number,
        )
    return root


# -- the document ----------------------------------------------------------------
def _evidence(source: SourceContext) -> dict[str, list[Dataset]]:
    """Hierarchical references to the inputs: the reference CT's study as the current
    requested procedure's evidence, the other studies (SPECT/CT time points) as other
    pertinent evidence (PS3.3 C.17.2.3)."""
    by_study: dict[str, dict[str, list[InstanceReference]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for ref in source.all_instances:
        by_study[ref.study_instance_uid][ref.series_instance_uid].append(ref)
    items: dict[str, list[Dataset]] = {}
    for study_uid, series in by_study.items():
        keyword = (
            "CurrentRequestedProcedureEvidenceSequence"
            if study_uid == source.study_instance_uid
            else "PertinentOtherEvidenceSequence"
        )
        items.setdefault(keyword, []).append(_study_item(study_uid, series))
    return items


def _study_item(study_uid: str, series: dict[str, list[InstanceReference]]) -> Dataset:
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = []
    for series_uid, refs in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = []
        for ref in refs:
            sop = Dataset()
            sop.ReferencedSOPClassUID = ref.sop_class_uid
            sop.ReferencedSOPInstanceUID = ref.sop_instance_uid
            item.ReferencedSOPSequence.append(sop)
        study.ReferencedSeriesSequence.append(item)
    return study


def _document(source: SourceContext, identity: ResultIdentity) -> Dataset:
    """Patient, study, SR Document Series, equipment and SR Document General modules."""
    uids = output_uids(source, identity, OutputObject.RRD_SR)
    ds = patient_study_dataset(source)
    ds.SOPClassUID = RRD_SR_STORAGE
    ds.SOPInstanceUID = uids.sop_instance_uid
    ds.Modality = OutputObject.RRD_SR.modality
    ds.SeriesInstanceUID = uids.series_instance_uid
    ds.SeriesNumber = identity.series_number(OutputObject.RRD_SR)
    ds.SeriesDescription = identity.series_description(OutputObject.RRD_SR)
    ds.ReferencedPerformedProcedureStepSequence = []
    set_equipment(ds, identity)
    # Enhanced General Equipment (PS3.3 C.7.5.2): software has no hardware serial
    # number; the Device Observer UID identifies theranode as a device.
    ds.DeviceSerialNumber = device_uid()
    set_creation(ds, identity)
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    for keyword, items in _evidence(source).items():
        setattr(ds, keyword, items)
    ds.file_meta = file_meta(RRD_SR_STORAGE, uids.sop_instance_uid)
    ds.preamble = b"\x00" * 128
    return ds


def write_rrd_sr(
    result: CycleResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    administration: Administration,
) -> Dataset:
    """The Radiopharmaceutical Radiation Dose SR of one cycle (TID 10021).

    Parameters
    ----------
    result:
        The cycle's doses; every organ VOI that is not excluded becomes a TID
        10023 entry with its mean absorbed dose in mGy. A result without organ
        VOIs (lesions only) gives a valid report with the administration and no
        organ entry (TID 10022 row 19 is optional), and says so in its Comment.
    source:
        Patient, study and inputs (the report is filed in the reference CT's study).
    identity:
        A cycle result identity; the report gets its own series (94nn).
    administration:
        Injection date-time and, if the SPECT had one, the administration event
        UID (:func:`administration_from_headers`).

    Raises
    ------
    MissingAttributeError
        The result states no administered activity (TID 10022 row 11 is mandatory).
    ValueError
        ``identity`` is not a cycle identity (the RRD SR records one administration).
    """
    require_kind(identity, ResultKind.CYCLE)
    content = report_content(result, administration, source, identity.software_version)
    ds = _document(source, identity)
    ds.update(content)
    logger.info(
        "RRD SR %s for %s: %d organ doses", ds.SOPInstanceUID, identity.label,
        len(organ_vois(result)[0]),
    )
    return in_tag_order(ds)
