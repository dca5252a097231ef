"""Where a result came from: patient/study identity and referenced inputs.

Every object theranode writes (RT Dose, SR, PDF) is filed in the study of
the reference CT of its cycle (for a course: the first cycle's reference
CT), carries that study's patient and study identity unchanged, so the PACS
viewer shows it beside the images, and references the instances it was
computed from. :class:`SourceContext` holds exactly that, built once from
the input headers by :func:`source_context_from_datasets`.

References
----------
DICOM PS3.3 C.7.1.1 (Patient module), C.7.2.1 (General Study module),
C.7.4.1 (Frame of Reference module), C.8.8.5 (Structure Set module),
C.12.2 (Common Instance Reference module).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydicom.dataset import Dataset

from theranode.dicomio.errors import DicomInputError, MissingAttributeError
from theranode.dosimetry.records_json import RecordCodec, RecordFormatError

logger = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass(frozen=True)
class InstanceReference:
    """The four UIDs that locate one instance, and its modality."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    modality: str = ""


@dataclass(frozen=True)
class SourceContext:
    """Identity copied from the inputs and references to them.

    Parameters
    ----------
    patient_id, issuer_of_patient_id, patient_name, patient_birth_date, patient_sex:
        Patient module values of the reference CT, as found (strings as in
        the header; empty when absent).
    study_instance_uid, study_id, accession_number, study_date, study_time,
    referring_physician_name, study_description:
        General Study module values of the reference CT's study.
    frame_of_reference_uid:
        Frame of reference of the reference CT; the dose grid is in it.
    reference_ct:
        The reference CT series' instances.
    structure_set:
        The RTSTRUCT whose ROIs define the VOIs, if any.
    roi_numbers:
        ``(ROI name, ROI Number)`` pairs of that RTSTRUCT.
    source_images:
        Every other instance the result was computed from (SPECT and CT of
        each time point), possibly in other studies.
    """

    patient_id: str
    study_instance_uid: str
    frame_of_reference_uid: str
    reference_ct: tuple[InstanceReference, ...]
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_id: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    referring_physician_name: str = ""
    study_description: str = ""
    structure_set: InstanceReference | None = None
    roi_numbers: tuple[tuple[str, int], ...] = ()
    source_images: tuple[InstanceReference, ...] = ()

    @property
    def patient_key(self) -> str:
        """PatientID qualified by its issuer (stable across studies)."""
        return f"{self.issuer_of_patient_id}|{self.patient_id}"

    @property
    def all_instances(self) -> tuple[InstanceReference, ...]:
        """Reference CT, structure set and source images, without duplicates."""
        refs: list[InstanceReference] = list(self.reference_ct)
        if self.structure_set is not None:
            refs.append(self.structure_set)
        refs.extend(self.source_images)
        return _unique(refs)

    @property
    def images(self) -> tuple[InstanceReference, ...]:
        """Reference CT and source images (everything but the structure set)."""
        return _unique([*self.reference_ct, *self.source_images])

    def roi_number(self, roi_name: str) -> int | None:
        """ROI Number of ``roi_name`` in the structure set (``None`` when absent)."""
        for name, number in self.roi_numbers:
            if name == roi_name:
                return number
        return None


def _unique(refs: Iterable[InstanceReference]) -> tuple[InstanceReference, ...]:
    """``refs`` without repeated SOP Instance UIDs, first occurrence kept."""
    seen: dict[str, InstanceReference] = {}
    for ref in refs:
        seen.setdefault(ref.sop_instance_uid, ref)
    return tuple(seen.values())


def _required(ds: Dataset, keyword: str, what: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise MissingAttributeError(
            f"The {what} has no {keyword}; theranode needs it to file results with "
            "the inputs. Fix the header at the modality or PACS and resend."
        )
    return value


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def instance_reference(ds: Dataset) -> InstanceReference:
    """The UIDs of ``ds`` (raises when one of the four is missing)."""
    return InstanceReference(
        study_instance_uid=_required(ds, "StudyInstanceUID", "instance"),
        series_instance_uid=_required(ds, "SeriesInstanceUID", "instance"),
        sop_class_uid=_required(ds, "SOPClassUID", "instance"),
        sop_instance_uid=_required(ds, "SOPInstanceUID", "instance"),
        modality=_text(ds, "Modality"),
    )


def _structure_set_frames(structure_set: Dataset) -> set[str]:
    return {
        str(item.get("FrameOfReferenceUID", ""))
        for item in structure_set.get("ReferencedFrameOfReferenceSequence", [])
    }


def _roi_numbers(structure_set: Dataset) -> tuple[tuple[str, int], ...]:
    return tuple(
        (str(item.ROIName), int(item.ROINumber))
        for item in structure_set.get("StructureSetROISequence", [])
        if "ROIName" in item and "ROINumber" in item
    )


def _check_same_series(reference_ct: Sequence[Dataset]) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in reference_ct}
    frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in reference_ct}
    if len(series) != 1 or len(frames) != 1:
        raise DicomInputError(
            f"The reference CT must be one series in one frame of reference; got "
            f"{len(series)} series and {len(frames)} frames of reference. Pass the "
            "instances of the cycle's first CT only."
        )


def source_context_from_datasets(
    reference_ct: Sequence[Dataset],
    *,
    structure_set: Dataset | None = None,
    source_images: Sequence[Dataset] = (),
) -> SourceContext:
    """Build the :class:`SourceContext` of a cycle from its input headers.

    Parameters
    ----------
    reference_ct:
        Instances (headers suffice) of the cycle's reference CT series.
    structure_set:
        The RTSTRUCT whose ROIs are the VOIs; its referenced frame of
        reference must be the reference CT's.
    source_images:
        Other instances the result used (SPECT and CT of every time point).

    Raises
    ------
    MissingAttributeError
        A patient, study or frame-of-reference UID is missing.
    DicomInputError
        The reference CT spans several series, or the RTSTRUCT is drawn in
        another frame of reference.
    """
    if not reference_ct:
        raise DicomInputError(
            "No reference CT instances were given; the results are filed in the "
            "reference CT's study, so pass at least its first instance."
        )
    _check_same_series(reference_ct)
    first = reference_ct[0]
    frame_uid = _required(first, "FrameOfReferenceUID", "reference CT")
    structure_ref = None
    roi_numbers: tuple[tuple[str, int], ...] = ()
    if structure_set is not None:
        frames = _structure_set_frames(structure_set)
        if frame_uid not in frames:
            raise DicomInputError(
                f"The RTSTRUCT {structure_set.get('SOPInstanceUID')} is drawn in frames "
                f"{sorted(frames)}, not in the reference CT's {frame_uid}; use the "
                "structure set drawn on the cycle's reference CT."
            )
        structure_ref = instance_reference(structure_set)
        roi_numbers = _roi_numbers(structure_set)
    return SourceContext(
        patient_id=_required(first, "PatientID", "reference CT"),
        issuer_of_patient_id=_text(first, "IssuerOfPatientID"),
        patient_name=_text(first, "PatientName"),
        patient_birth_date=_text(first, "PatientBirthDate"),
        patient_sex=_text(first, "PatientSex"),
        study_instance_uid=_required(first, "StudyInstanceUID", "reference CT"),
        study_id=_text(first, "StudyID"),
        accession_number=_text(first, "AccessionNumber"),
        study_date=_text(first, "StudyDate"),
        study_time=_text(first, "StudyTime"),
        referring_physician_name=_text(first, "ReferringPhysicianName"),
        study_description=_text(first, "StudyDescription"),
        frame_of_reference_uid=frame_uid,
        reference_ct=_unique(instance_reference(ds) for ds in reference_ct),
        structure_set=structure_ref,
        roi_numbers=roi_numbers,
        source_images=_unique(instance_reference(ds) for ds in source_images),
    )


def course_source_context(cycles: Sequence[SourceContext]) -> SourceContext:
    """Source of a course result: the first cycle's identity and grid, every cycle's inputs.

    The cumulative dose lives on the first cycle's reference CT (its frame
    of reference and study); the other cycles' reference CTs, structure sets
    and images become source images.

    Raises
    ------
    DicomInputError
        No cycles, or cycles of different patients.
    """
    if not cycles:
        raise DicomInputError("A course needs at least one cycle's source context.")
    first = cycles[0]
    others = list(cycles[1:])
    patients = {c.patient_key for c in cycles}
    if len(patients) != 1:
        raise DicomInputError(
            f"The cycles belong to {len(patients)} different patients; a course is "
            "one patient's. Check the grouping of the inputs."
        )
    extra: list[InstanceReference] = list(first.source_images)
    for other in others:
        extra.extend(other.all_instances)
    return replace(first, source_images=_unique(extra))


#: Specific Character Set of every result object (PS3.3 C.12.1.1.2: ISO_IR 192 = UTF-8).
UTF8 = "ISO_IR 192"


def patient_study_dataset(source: SourceContext) -> Dataset:
    """Patient and General Study module attributes copied from ``source``.

    Type 2 attributes are present (possibly empty) as the modules require.
    """
    ds = Dataset()
    # Results are always UTF-8: their texts carry λ, ≥ and method names such
    # as "Hänscheid", and UTF-8 also holds any patient name the input's
    # character set could (pydicom has decoded it to text already).
    ds.SpecificCharacterSet = UTF8
    ds.PatientName = source.patient_name
    ds.PatientID = source.patient_id
    if source.issuer_of_patient_id:
        ds.IssuerOfPatientID = source.issuer_of_patient_id
    ds.PatientBirthDate = source.patient_birth_date
    ds.PatientSex = source.patient_sex
    ds.StudyInstanceUID = source.study_instance_uid
    ds.StudyDate = source.study_date
    ds.StudyTime = source.study_time
    ds.ReferringPhysicianName = source.referring_physician_name
    ds.StudyID = source.study_id
    ds.AccessionNumber = source.accession_number
    if source.study_description:
        ds.StudyDescription = source.study_description
    return ds


# -- storage as JSON ------------------------------------------------------------------
_SOURCE_CODEC = RecordCodec((InstanceReference, SourceContext))


def source_to_json(source: SourceContext) -> Any:
    """``source`` as a plain JSON value (stored with every result,
    :mod:`theranode.service.jobs.results`)."""
    return _SOURCE_CODEC.encode(source, SourceContext, "source", _no_arrays)


def source_from_json(doc: Any) -> SourceContext:
    """The :class:`SourceContext` that :func:`source_to_json` wrote.

    Raises
    ------
    RecordFormatError
        ``doc`` is not a source context (a field missing, unknown or of the
        wrong type).
    """
    source: SourceContext = _SOURCE_CODEC.decode(doc, SourceContext, "source", _no_load)
    return source


def _no_arrays(key: str, array: object) -> None:
    raise RecordFormatError(f"{key}: a source context holds no arrays.")


def _no_load(key: str, dtype: object, shape: object) -> Any:
    raise RecordFormatError(f"{key}: a source context holds no arrays.")
