"""What the pixel values of a SPECT object mean, from its header alone.

Vendors store quantitative SPECT in several ways. :func:`declared_values`
decides, without decoding pixels, how the stored values of one NM, PT or
Enhanced PET object become Bq/mL, and refuses (naming the attribute) every
object whose declared units cannot be read. The rules, in order:

1. A **Real World Value Mapping** item whose Measurement Units code is an
   activity concentration (UCUM ``Bq/mL``, ``kBq/mL``, ``MBq/mL``, ``Bq/ml``,
   ``Bq/cm3``, ``Bq/L``, ``uCi/mL`` …) is read:
   ``C [Bq/mL] = (stored × RealWorldValueSlope + RealWorldValueIntercept) × unit``.
   The mapping applies to stored values (PS3.3 C.7.6.16.2.11.1), so Rescale
   Slope/Intercept are not applied on top. LUT Label and LUT Explanation are
   not used; the double-float First/Last Value Mapped variants change nothing.
2. ``Units (0054,1001) = BQML`` (PET Series module; some vendors add it to NM
   objects): ``C = stored × RescaleSlope + RescaleIntercept``.
3. Any other declared unit — an RWVM code that is not a concentration or
   counts (SUV ``{SUVbw}g/ml``, ``1``, ``{counts}/s``, an unknown code) or
   ``Units`` other than BQML/CNTS — is **refused**, never read as counts.
4. **Counts** only where nothing declares otherwise: ``Units`` CNTS or
   absent and no RWVM, or an RWVM in UCUM ``{counts}`` (as Hermes writes):
   counts = stored × slope + intercept of that mapping (else Rescale), to be
   calibrated with the camera's sensitivity (NM only; PT must be BQML).

Decay reference of concentrations (what time the values refer to):
``DecayCorrection (0054,1102)`` START (the series reference time), ADMIN (the
administration, RadiopharmaceuticalStartDateTime needed) or NONE (frame
averages, ActualFrameDuration needed); Enhanced PET: ``Decay Corrected
(0018,9758)`` YES with ``Decay Correction DateTime (0018,9701)``, or NO.
NM objects without DecayCorrection are taken as referred to the acquisition
start. A PT object without DecayCorrection is refused.

References
----------
DICOM PS3.3 C.7.6.16.2.11 (Real World Value Mapping), C.8.9.1 (PET Series:
Units, Decay Correction), C.8.22 (Enhanced PET modules), PS3.16 CID 84
(PET units, UCUM), C.7.6.16.2.9 (Pixel Value Transformation).
The Unified Code for Units of Measure (UCUM), https://ucum.org/ucum.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from pydicom.dataset import Dataset

from theranode.dicomio.errors import MissingAttributeError, UnsupportedObjectError
from theranode.dicomio.headers import injection, parse_dt

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
SPECT_SOP_CLASSES = frozenset({NM_IMAGE_STORAGE, PET_IMAGE_STORAGE, ENHANCED_PET_IMAGE_STORAGE})
#: ImageType value 3 of reconstructed NM (PS3.3 C.8.4.7.1.1).
RECONSTRUCTED_NM = frozenset({"RECON TOMO", "RECON GATED TOMO"})

_CONCENTRATION = re.compile(
    r"^(?P<prefix>[kMG]?)Bq/(?P<volume>mL|ml|cm3|L|l)$|^(?P<ci>[mun]?)Ci/(?P<civol>mL|ml|cm3)$"
)
_BQ_PREFIX = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
_CI_PREFIX = {"": 3.7e10, "m": 3.7e7, "u": 3.7e4, "n": 37.0}
_PER_VOLUME = {"mL": 1.0, "ml": 1.0, "cm3": 1.0, "L": 1e-3, "l": 1e-3}
#: Codes read as counts (UCUM annotations; Hermes writes ``{counts}``).
COUNTS_CODES = frozenset({"{counts}", "{count}", "{cnts}", "CNTS"})


class SpectEncoding(str, Enum):
    """How the voxel values of a SPECT object were turned into Bq/mL."""

    NM_REAL_WORLD_VALUES = "NM real world value mapping (Bq/mL)"
    NM_UNITS_BQML = "NM Units BQML with rescale"
    PT_BQML = "PT Units BQML"
    ENHANCED_PT_BQML = "Enhanced PET real world value mapping (Bq/mL)"
    NM_COUNTS_CALIBRATED = "NM counts with camera calibration"


class DecayReference(str, Enum):
    """The time the concentrations refer to."""

    START = "START"  # the series reference time (acquisition start)
    ADMIN = "ADMIN"  # the radiopharmaceutical administration
    NONE = "NONE"  # not decay corrected: averages over the acquisition
    DATETIME = "DATETIME"  # Enhanced PET: Decay Correction DateTime


@dataclass(frozen=True)
class ValueDeclaration:
    """How stored values of one object (or its first frame) become Bq/mL.

    ``C = (stored × slope + intercept) × to_bq_per_ml``; for counts
    (:attr:`is_counts`) the same linear map gives counts per voxel.
    """

    encoding: SpectEncoding
    slope: float
    intercept: float
    to_bq_per_ml: float
    source: str
    decay: DecayReference
    #: What the values are decay corrected to: the administration (ADMIN) or Enhanced
    #: PET's Decay Correction DateTime; ``None`` for START and NONE.
    decay_datetime: datetime | None = None

    @property
    def is_counts(self) -> bool:
        return self.encoding is SpectEncoding.NM_COUNTS_CALIBRATED


@dataclass(frozen=True)
class _Mapping:
    slope: float
    intercept: float
    code: str
    factor: float | None  # Bq/mL per declared unit; None for counts


def concentration_factor(code: str) -> float | None:
    """Bq/mL per unit of a UCUM activity-concentration code, else None.

    UCUM is case-sensitive (``MBq`` mega, ``mBq`` milli): ``mBq/mL`` is not
    accepted, no SPECT is stored in it and a misspelt ``MBq`` would be off by 10⁹.
    ``BQML`` (the PET Units defined term) is accepted as Bq/mL.
    """
    text = code.strip()
    if text == "BQML":
        return 1.0
    match = _CONCENTRATION.match(text)
    if match is None:
        return None
    if match.group("ci") is not None:
        return _CI_PREFIX[match.group("ci")] / _PER_VOLUME[match.group("civol")]
    return _BQ_PREFIX[match.group("prefix")] * _PER_VOLUME[match.group("volume")]


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _units_code(item: Dataset, where: str) -> str:
    units = item.get("MeasurementUnitsCodeSequence")
    code = str(units[0].get("CodeValue", "")).strip() if units else ""
    if not code:
        raise MissingAttributeError(
            f"RealWorldValueMappingSequence {where} has no MeasurementUnitsCodeSequence "
            "CodeValue; the units of the values are unknown. Export the SPECT with a UCUM "
            "unit (e.g. Bq/mL)."
        )
    return code


def _mapping(item: Dataset, where: str) -> _Mapping:
    code = _units_code(item, where)
    factor = concentration_factor(code)
    if factor is None and code not in COUNTS_CODES:
        raise UnsupportedObjectError(
            f"RealWorldValueMappingSequence units {code!r} cannot be read: theranode reads "
            "activity concentration (Bq/mL, kBq/mL, MBq/mL in UCUM) or {counts}; export the "
            "SPECT in Bq/mL."
        )
    slope = _number(item.get("RealWorldValueSlope"))
    if slope is None:
        raise UnsupportedObjectError(
            f"RealWorldValueSlope missing in RealWorldValueMappingSequence {where} "
            f"({code}); a lookup-table mapping (RealWorldValueLUTData) is not read. Export "
            "the SPECT with a linear mapping."
        )
    return _Mapping(slope, _number(item.get("RealWorldValueIntercept")) or 0.0, code, factor)


def rwvm_choice(items: Sequence[Dataset] | None, where: str = "") -> _Mapping | None:
    """The mapping to use among RWVM items: a concentration, else counts, else None.

    Raises
    ------
    UnsupportedObjectError
        An item declares units that are neither a concentration nor counts
        (and no concentration item exists), or several concentration items
        disagree.
    """
    if not items:
        return None
    concentration: list[_Mapping] = []
    counts: list[_Mapping] = []
    refused: UnsupportedObjectError | MissingAttributeError | None = None
    for number, item in enumerate(items, start=1):
        try:
            mapping = _mapping(item, f"{where}item {number}")
        except (UnsupportedObjectError, MissingAttributeError) as exc:
            refused = refused or exc
            continue
        (counts if mapping.factor is None else concentration).append(mapping)
    if concentration:
        values = {(m.slope * m.factor, m.intercept * m.factor) for m in concentration if m.factor}
        if len(values) > 1:
            raise UnsupportedObjectError(
                f"RealWorldValueMappingSequence {where}holds {len(concentration)} concentration "
                "mappings that disagree; theranode cannot tell which one is right."
            )
        return concentration[0]
    if refused is not None:
        raise refused
    return counts[0] if counts else None


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope = _number(ds.get("RescaleSlope"))
    return (1.0 if slope is None else slope), (_number(ds.get("RescaleIntercept")) or 0.0)


def _units(ds: Dataset) -> str:
    return str(ds.get("Units", "") or "").strip().upper()


def declared_values(ds: Dataset) -> ValueDeclaration:
    """How ``ds`` (NM, PT or Enhanced PET) declares its values (see module docstring).

    Raises
    ------
    UnsupportedObjectError
        Declared units theranode cannot read, or an unknown decay correction.
    MissingAttributeError
        An attribute the declared encoding needs is missing.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == ENHANCED_PET_IMAGE_STORAGE:
        return _enhanced_pet(ds)
    if sop_class == PET_IMAGE_STORAGE:
        return _pet(ds)
    return _nm(ds)


def _nm(ds: Dataset) -> ValueDeclaration:
    units = _units(ds)
    try:
        mapping = rwvm_choice(ds.get("RealWorldValueMappingSequence"))
    except (UnsupportedObjectError, MissingAttributeError):
        if units != "BQML":
            raise
        mapping = None  # Units BQML is read; the unreadable RWVM item is ignored
    if mapping is not None and mapping.factor is not None:
        return _concentration(
            ds, SpectEncoding.NM_REAL_WORLD_VALUES, mapping.slope, mapping.intercept,
            mapping.factor, f"RealWorldValueMappingSequence ({mapping.code})", nm=True,
        )
    if units == "BQML":
        slope, intercept = _rescale(ds)
        return _concentration(
            ds, SpectEncoding.NM_UNITS_BQML, slope, intercept, 1.0,
            "Units BQML with RescaleSlope/RescaleIntercept", nm=True,
        )
    if units not in ("", "CNTS"):
        raise UnsupportedObjectError(
            f"Units (0054,1001) {units!r} of an NM SPECT cannot be read: theranode reads "
            "BQML (Bq/mL) or CNTS (counts, with a camera calibration)."
        )
    if mapping is not None:
        source = f"RealWorldValueMappingSequence ({mapping.code})"
        slope, intercept = mapping.slope, mapping.intercept
    else:
        source = "counts (no Units or Real World Value Mapping in Bq/mL)"
        slope, intercept = _rescale(ds)
    return ValueDeclaration(
        SpectEncoding.NM_COUNTS_CALIBRATED, slope, intercept, 1.0, source, DecayReference.NONE
    )


def _pet(ds: Dataset) -> ValueDeclaration:
    units = _units(ds)
    if units != "BQML":
        raise UnsupportedObjectError(
            f"Units (0054,1001) of a PT SPECT is {units or 'missing'!r}, expected BQML: only "
            "activity concentration images can be used for dosimetry."
        )
    slope, intercept = _rescale(ds)
    return _concentration(
        ds, SpectEncoding.PT_BQML, slope, intercept, 1.0,
        "Units BQML with RescaleSlope/RescaleIntercept", nm=False,
    )


def _concentration(
    ds: Dataset, encoding: SpectEncoding, slope: float, intercept: float, factor: float,
    source: str, *, nm: bool,
) -> ValueDeclaration:
    raw = str(ds.get("DecayCorrection", "") or "").strip().upper()
    if not raw and nm:
        decay = DecayReference.START
    elif raw in ("START", "ADMIN", "NONE"):
        decay = DecayReference(raw)
    elif not raw:
        raise MissingAttributeError(
            "DecayCorrection (0054,1102) is missing: the time the PT values refer to "
            "(START, ADMIN or NONE) is unknown. Export the series with it."
        )
    else:
        raise UnsupportedObjectError(
            f"DecayCorrection (0054,1102) {raw!r} is not understood; expected START, ADMIN "
            "or NONE."
        )
    administered = _check_decay_inputs(ds, decay)
    return ValueDeclaration(encoding, slope, intercept, factor, source, decay, administered)


def _check_decay_inputs(ds: Dataset, decay: DecayReference) -> datetime | None:
    """Refuse a decay reference its inputs cannot date; ADMIN: the administration's time."""
    if decay is DecayReference.ADMIN:
        shot = injection(ds)
        if shot is None or shot.start is None:
            raise MissingAttributeError(
                "RadiopharmaceuticalStartDateTime (0018,1078) is needed: the values are decay "
                "corrected to the administration (DecayCorrection ADMIN) and a time of day "
                "alone cannot date it."
            )
        return shot.start
    if decay is DecayReference.NONE and acquisition_duration_s(ds) is None:
        raise MissingAttributeError(
            "ActualFrameDuration (0018,1242) is needed: the values are not decay corrected "
            "(DecayCorrection NONE) and are averages over the acquisition."
        )
    return None


def acquisition_duration_s(ds: Dataset) -> float | None:
    """Acquisition time of an NM or PT object in seconds (None when unknown).

    NM: Σ ActualFrameDuration × NumberOfFramesInRotation over the Rotation
    Information Sequence (the whole tomographic acquisition), else the
    top-level ActualFrameDuration (PT: the frame duration).
    """
    total_ms = 0.0
    for item in ds.get("RotationInformationSequence", []) or []:
        per_frame = _number(item.get("ActualFrameDuration"))
        frames = _number(item.get("NumberOfFramesInRotation"))
        if per_frame is not None and frames is not None:
            total_ms += per_frame * frames
    if total_ms > 0:
        return total_ms / 1000.0
    top = _number(ds.get("ActualFrameDuration"))
    return None if top is None or top <= 0 else top / 1000.0


# -- Enhanced PET ---------------------------------------------------------------
def frame_group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """First item of functional group ``keyword`` for frame ``index`` (per-frame, else shared)."""
    items = frame_sequence(ds, index, keyword)
    return items[0] if items else None


def frame_sequence(ds: Dataset, index: int, keyword: str) -> Sequence[Dataset]:
    """Functional group sequence ``keyword`` of frame ``index`` (per-frame, else shared)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if index < len(per_frame) and per_frame[index].get(keyword):
        found: Sequence[Dataset] = per_frame[index].get(keyword)
        return found
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    if shared and shared[0].get(keyword):
        found = shared[0].get(keyword)
        return found
    return []


def number_of_frames(ds: Dataset) -> int:
    value = _number(ds.get("NumberOfFrames"))
    return 1 if value is None else int(value)


def enhanced_frame_mapping(ds: Dataset, index: int) -> tuple[float, float, float, str]:
    """(slope, intercept, Bq/mL per unit, source) of frame ``index`` of an Enhanced PET."""
    where = f"of frame {index + 1} "
    mapping = rwvm_choice(frame_sequence(ds, index, "RealWorldValueMappingSequence"), where)
    if mapping is not None and mapping.factor is not None:
        return mapping.slope, mapping.intercept, mapping.factor, (
            f"RealWorldValueMappingSequence ({mapping.code})"
        )
    if mapping is not None:
        raise UnsupportedObjectError(
            f"RealWorldValueMappingSequence {where}is in {mapping.code}: an Enhanced PET SPECT "
            "must be in activity concentration (Bq/mL)."
        )
    if _units(ds) == "BQML":
        transform = frame_group(ds, index, "PixelValueTransformationSequence")
        slope, intercept = _rescale(transform if transform is not None else ds)
        return slope, intercept, 1.0, "Units BQML with Pixel Value Transformation"
    raise MissingAttributeError(
        f"RealWorldValueMappingSequence {where}is missing: an Enhanced PET needs it "
        "(PS3.3 A.56) to say its values are Bq/mL."
    )


def _enhanced_pet(ds: Dataset) -> ValueDeclaration:
    frames = number_of_frames(ds)
    first = enhanced_frame_mapping(ds, 0)
    for index in range(1, frames):
        enhanced_frame_mapping(ds, index)
    decay, when = _enhanced_decay(ds)
    return ValueDeclaration(
        SpectEncoding.ENHANCED_PT_BQML, first[0], first[1], first[2], first[3], decay, when
    )


def _enhanced_decay(ds: Dataset) -> tuple[DecayReference, datetime | None]:
    corrected = str(ds.get("DecayCorrected", "") or "").strip().upper()
    if corrected == "YES":
        when = parse_dt(ds.get("DecayCorrectionDateTime"))
        if when is None:
            raise MissingAttributeError(
                "DecayCorrectionDateTime (0018,9701) is missing or malformed while Decay "
                "Corrected is YES: the time the values refer to is unknown."
            )
        return DecayReference.DATETIME, when
    if corrected == "NO":
        return DecayReference.NONE, None
    raise MissingAttributeError(
        f"DecayCorrected (0018,9758) is {corrected or 'missing'!r}, expected YES or NO: the "
        "time the Enhanced PET values refer to is unknown."
    )


# -- which objects are read as SPECT volumes --------------------------------------
def is_read_as_spect(ds: Dataset) -> bool:
    """True for the objects the pipeline reads as a SPECT volume.

    PT and Enhanced PET always; NM only when reconstructed (ImageType value 3
    RECON TOMO or RECON GATED TOMO): projections, statics and whole-body
    scans are filed but never read, so their units do not matter.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in (PET_IMAGE_STORAGE, ENHANCED_PET_IMAGE_STORAGE):
        return True
    if sop_class != NM_IMAGE_STORAGE:
        return False
    image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
    return len(image_type) >= 3 and image_type[2] in RECONSTRUCTED_NM
