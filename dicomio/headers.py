"""Header facts needed to file and group a received instance.

:func:`instance_header` turns a dataset into an :class:`InstanceHeader`: its
UIDs (validated, so archive paths can be built from them), what kind of
object it is, its frame of reference, when it was acquired and — for NM/PT —
when and what was injected. Everything the node indexes comes from here.

References
----------
DICOM PS3.3 C.8.4.10 (NM Isotope module), C.8.9.1 (PET Isotope module),
C.7.4.1 (Frame of Reference), C.8.8.5 (Structure Set module);
PS3.5 9.1 (UID encoding rules).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from theranode.dicomio.errors import MissingAttributeError, UnsupportedObjectError
from theranode.dosimetry.plausibility import MAX_PLAUSIBLE_ACTIVITY_MBQ

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: SOP classes the node stores, by the kind of series they make.
SOP_CLASS_KINDS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.20": "NM",  # NM Image Storage
    "1.2.840.10008.5.1.4.1.1.128": "PT",  # PET Image Storage
    "1.2.840.10008.5.1.4.1.1.130": "PT",  # Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.2": "CT",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",  # RT Structure Set Storage
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",  # Segmentation Storage
}

#: SNOMED CT code of Lu-177 (PS3.16 CID 18, "Lutetium^177^").
LU177_CODES = frozenset({"447553000", "C-145AB"})


class SeriesKind(str, enum.Enum):
    """What a series contributes to dosimetry."""

    SPECT = "SPECT"  # NM or PT reconstructed emission images
    CT = "CT"
    RTSTRUCT = "RTSTRUCT"
    SEG = "SEG"


@dataclass(frozen=True)
class Injection:
    """Radiopharmaceutical administration as recorded in an NM/PT header.

    ``start`` is a full date-time when the header has one; otherwise only
    ``start_time`` is known and grouping must supply the date.
    """

    start: datetime | None
    start_time: time | None
    event_uid: str | None
    activity_mbq: float | None
    radionuclide: str | None  # "Lu-177" when coded as such, else code meaning/value
    radionuclide_code: str | None


@dataclass(frozen=True)
class InstanceHeader:
    """What the node needs from one instance to file and group it."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    kind: SeriesKind
    modality: str
    patient_id: str
    issuer_of_patient_id: str
    frame_of_reference_uid: str | None
    referenced_frame_of_reference_uids: tuple[str, ...]
    acquired: datetime | None
    injection: Injection | None
    series_description: str
    series_number: int | None
    #: Pseudonymous patient key (:class:`PatientKeyer`): used in paths, logs and the index.
    patient_key: str


#: Shortest site secret :class:`PatientKeyer` accepts (bytes; the node makes 32).
MIN_SECRET_BYTES = 16


def patient_key(patient_id: str, issuer: str, secret: bytes) -> str:
    """A 16-hex-digit pseudonymous key of PatientID (+ issuer); never the ID itself.

    HMAC-SHA-256 keyed with the site's secret, truncated to 64 bits. Without
    the secret the key cannot be computed from a candidate PatientID, so an
    exhaustive search over short identifiers (a 6-digit MRN is 10⁶ guesses)
    is impossible; an unkeyed hash is recovered that way in under a second.

    References
    ----------
    RFC 2104 (HMAC); NIST SP 800-107 Rev. 1, section 5.3 (truncated HMAC).
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the site secret has {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed"
        )
    message = f"{issuer}\\{patient_id}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class PatientKeyer:
    """Computes pseudonymous patient keys with one site's secret (never shown in repr)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the site secret has {len(self.secret)} bytes; at least "
                f"{MIN_SECRET_BYTES} are needed"
            )

    def __call__(self, patient_id: str, issuer: str = "") -> str:
        """The key of PatientID ``patient_id`` issued by ``issuer``."""
        return patient_key(patient_id, issuer, self.secret)


def is_valid_uid(value: str) -> bool:
    """True for a UID that follows PS3.5 9.1 (digits and dots, ≤ 64 characters)."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword)
    if not value:
        raise MissingAttributeError(f"{keyword} is missing or empty; the object cannot be filed.")
    if not is_valid_uid(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise MissingAttributeError(
            f"{keyword} {shown!r} is not a valid DICOM UID (digits and dots, at most 64 "
            "characters); the object cannot be filed."
        )
    return value


def parse_da(value: Any) -> date | None:
    """A DICOM DA string (YYYYMMDD) as a date; None when absent or malformed."""
    text = str(value or "").strip()
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def parse_tm(value: Any) -> time | None:
    """A DICOM TM string (HH[MM[SS[.FFFFFF]]]) as a time; None when malformed."""
    text = str(value or "").strip().replace(":", "")
    if len(text) < 2:
        return None
    main, _, fraction = text.partition(".")
    try:
        hour = int(main[0:2])
        minute = int(main[2:4]) if len(main) >= 4 else 0
        second = int(main[4:6]) if len(main) >= 6 else 0
        micro = int((fraction + "000000")[:6]) if fraction else 0
        return time(hour, minute, min(second, 59), micro)
    except ValueError:
        return None


def parse_dt(value: Any) -> datetime | None:
    """A DICOM DT string as a naive local date-time (any UTC offset dropped)."""
    text = str(value or "").strip()
    if len(text) < 8:
        return None
    match = re.match(r"^(\d{8})([\d.]*)([+-]\d{4})?$", text)
    if not match:
        return None
    day = parse_da(match.group(1))
    if day is None:
        return None
    tod = parse_tm(match.group(2)) if match.group(2) else time(0)
    return datetime.combine(day, tod or time(0))


def _date_time(ds: Dataset, date_kw: str, time_kw: str) -> datetime | None:
    day = parse_da(ds.get(date_kw))
    tod = parse_tm(ds.get(time_kw))
    if day is None or tod is None:
        return None
    return datetime.combine(day, tod)


def acquisition_datetime(ds: Dataset) -> datetime | None:
    """When the data were acquired: Acquisition, then Series, Content, Study date-time."""
    direct = parse_dt(ds.get("AcquisitionDateTime"))
    if direct is not None:
        return direct
    for date_kw, time_kw in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("SeriesDate", "SeriesTime"),
        ("ContentDate", "ContentTime"),
        ("StudyDate", "StudyTime"),
    ):
        found = _date_time(ds, date_kw, time_kw)
        if found is not None:
            return found
    return None


def _radionuclide(item: Dataset) -> tuple[str | None, str | None]:
    codes = item.get("RadionuclideCodeSequence")
    if codes:
        code = codes[0]
        value = str(code.get("CodeValue", "")).strip()
        meaning = str(code.get("CodeMeaning", "")).strip()
        if value in LU177_CODES or "177" in meaning and "lu" in meaning.lower():
            return "Lu-177", value or None
        return meaning or value or None, value or None
    name = _text(item, "Radionuclide") if "Radionuclide" in item else ""
    return (name or None), None


def _activity_mbq(dose: Any, modality: str) -> float | None:
    """RadionuclideTotalDose in MBq, or None when absent, not a number or implausible.

    RadionuclideTotalDose is in MBq for NM (PS3.3 C.8.4.10.1) and in Bq for
    PET (C.8.9.1.1.4). A negative, zero or infinite value, or one above
    :data:`theranode.dosimetry.plausibility.MAX_PLAUSIBLE_ACTIVITY_MBQ`, is
    dropped rather than carried into dosimetry.
    """
    if dose in (None, ""):
        return None
    try:
        activity_mbq = float(dose)
    except (TypeError, ValueError):
        return None
    if modality == "PT":
        activity_mbq /= 1e6
    if not (math.isfinite(activity_mbq) and 0 < activity_mbq <= MAX_PLAUSIBLE_ACTIVITY_MBQ):
        return None
    return activity_mbq


def injection(ds: Dataset) -> Injection | None:
    """The administration recorded in the Radiopharmaceutical Information Sequence.

    RadionuclideTotalDose is in MBq for NM (PS3.3 C.8.4.10.1) and in Bq for
    PET (C.8.9.1.1.4); both are returned in MBq.
    """
    sequence = ds.get("RadiopharmaceuticalInformationSequence")
    if not sequence:
        return None
    item = sequence[0]
    start = parse_dt(item.get("RadiopharmaceuticalStartDateTime"))
    start_time = parse_tm(item.get("RadiopharmaceuticalStartTime"))
    if start is None and start_time is None:
        return None
    event_uid = _text(item, "RadiopharmaceuticalAdministrationEventUID") or _text(
        ds, "RadiopharmaceuticalAdministrationEventUID"
    )
    activity_mbq = _activity_mbq(item.get("RadionuclideTotalDose"), _text(ds, "Modality"))
    name, code = _radionuclide(item)
    return Injection(
        start=start,
        start_time=start_time or (start.time() if start else None),
        event_uid=event_uid if event_uid and is_valid_uid(event_uid) else None,
        activity_mbq=activity_mbq,
        radionuclide=name,
        radionuclide_code=code,
    )


def _referenced_frames(ds: Dataset) -> tuple[str, ...]:
    uids = []
    for item in ds.get("ReferencedFrameOfReferenceSequence", []):
        uid = _text(item, "FrameOfReferenceUID")
        if uid and is_valid_uid(uid):
            uids.append(uid)
    return tuple(dict.fromkeys(uids))


def _series_number(ds: Dataset) -> int | None:
    try:
        value = ds.get("SeriesNumber")
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def instance_header(ds: Dataset, keyer: PatientKeyer) -> InstanceHeader:
    """Extract and validate the filing and grouping facts of ``ds``.

    ``keyer`` computes the pseudonymous patient key with the site's secret.

    Raises
    ------
    MissingAttributeError
        A UID or PatientID needed to file the object is absent or invalid.
    UnsupportedObjectError
        The SOP class is not one theranode stores.
    """
    sop_class = _uid(ds, "SOPClassUID")
    kind_name = SOP_CLASS_KINDS.get(sop_class)
    if kind_name is None:
        raise UnsupportedObjectError(
            f"SOP class {sop_class} ({UID(sop_class).name}) is not stored by theranode; "
            "it accepts NM, PET, CT, RT Structure Set and Segmentation objects."
        )
    sop_instance = _uid(ds, "SOPInstanceUID")
    study = _uid(ds, "StudyInstanceUID")
    series = _uid(ds, "SeriesInstanceUID")
    patient_id = _text(ds, "PatientID")
    if not patient_id:
        raise MissingAttributeError(
            "PatientID is missing or empty; theranode groups by patient and cannot file it."
        )
    kind = SeriesKind.SPECT if kind_name in ("NM", "PT") else SeriesKind(kind_name)
    frame = _text(ds, "FrameOfReferenceUID") or None
    if frame is not None and not is_valid_uid(frame):
        raise MissingAttributeError(f"FrameOfReferenceUID {frame[:80]!r} is not a valid UID.")
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        kind=kind,
        modality=_text(ds, "Modality") or kind_name,
        patient_id=patient_id,
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        frame_of_reference_uid=frame,
        referenced_frame_of_reference_uids=_referenced_frames(ds),
        acquired=acquisition_datetime(ds),
        injection=injection(ds) if kind is SeriesKind.SPECT else None,
        series_description=_text(ds, "SeriesDescription")[:64],
        series_number=_series_number(ds),
        patient_key=keyer(patient_id, _text(ds, "IssuerOfPatientID")),
    )

