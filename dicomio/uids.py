"""Deterministic identity of the objects theranode writes.

A result object is identified by *what it is* (RT Dose, SR or PDF; of a
cycle or of a course; which version) and *what it was computed from* (the
UIDs of the input instances). Its Series and SOP Instance UIDs are derived
from exactly that, so re-sending or re-computing the same result with the
same inputs yields byte-identical objects that a PACS recognises as the
same instances instead of filing duplicates; a new result version gets a new
series.

UIDs are ``2.25.<integer>`` UIDs built from a name-based (SHA-1, version 5)
UUID, which needs no registered organisational root.

References
----------
DICOM PS3.5 9.1 (UID encoding rules) and B.2 (UUID-derived UIDs under 2.25);
ITU-T X.667 / RFC 4122 4.3 (name-based UUIDs).
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata

from theranode.dicomio.source import SourceContext

logger = logging.getLogger(__name__)

#: Namespace of every name-based UUID theranode derives (itself a v5 UUID).
THERANODE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:theranode:dicom-output")

MANUFACTURER = "theranode"
MODEL_NAME = "theranode Lu-177 dosimetry"


def software_version() -> str:
    """Version of the installed ``theranode`` distribution.

    Falls back to ``"0+unknown"`` for a source checkout that was never
    installed; such outputs say so in SoftwareVersions rather than lying.
    """
    try:
        return metadata.version("theranode")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class ResultKind(str, enum.Enum):
    """Whether a result covers one treatment cycle or the whole course."""

    CYCLE = "cycle"
    COURSE = "course"


class OutputObject(str, enum.Enum):
    """The kinds of object theranode writes, with their modality.

    ``RRD_SR`` is the optional Radiopharmaceutical Radiation Dose SR for dose
    registries (:mod:`theranode.dicomio.rrd_sr`); its modality is SR too.
    """

    RT_DOSE = "RTDOSE"
    SR = "SR"
    PDF = "DOC"
    RRD_SR = "RRDSR"

    @property
    def modality(self) -> str:
        """Value of Modality (0008,0060) for this object."""
        return "SR" if self is OutputObject.RRD_SR else self.value

    @property
    def series_number_base(self) -> int:
        """First Series Number of this object's series (cycle ``n`` adds ``n``)."""
        return {"RTDOSE": 9100, "SR": 9200, "DOC": 9300, "RRDSR": 9400}[self.value]


@dataclass(frozen=True)
class ResultIdentity:
    """Which result an object carries and when that result was created.

    Parameters
    ----------
    kind:
        Cycle or course result.
    version:
        Result version (1, 2, ...). A new version is produced when inputs or
        settings change; it gets new series.
    created_at:
        Creation time of the result, from the result's creation record. It
        becomes Content/Instance Creation Date and Time, so it must be the
        stored value, not ``now()``, for outputs to be reproducible.
    cycle_number:
        Cycle number (1-based); required for a cycle result, ``None`` for a
        course.
    software_version:
        Version of theranode that computed the result (SoftwareVersions).
    """

    kind: ResultKind
    version: int
    created_at: datetime
    cycle_number: int | None = None
    software_version: str = field(default_factory=software_version)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ResultKind(self.kind))
        if self.version < 1:
            raise ValueError(f"A result version starts at 1, got {self.version}.")
        if self.kind is ResultKind.CYCLE and (
            self.cycle_number is None or self.cycle_number < 1
        ):
            raise ValueError(
                f"A cycle result needs a cycle number >= 1, got {self.cycle_number!r}."
            )
        if self.kind is ResultKind.COURSE and self.cycle_number is not None:
            raise ValueError(
                f"A course result has no cycle number, got {self.cycle_number!r}; "
                "use ResultKind.CYCLE for a single cycle."
            )

    @property
    def label(self) -> str:
        """Short human label: ``"cycle 2 v1"`` or ``"course v3"``."""
        if self.kind is ResultKind.CYCLE:
            return f"cycle {self.cycle_number} v{self.version}"
        return f"course v{self.version}"

    def series_description(self, obj: OutputObject) -> str:
        """Series Description shown in the PACS, e.g. ``theranode Lu-177 AD cycle 2 v1``."""
        what = {
            OutputObject.RT_DOSE: "AD",
            OutputObject.SR: "AD report",
            OutputObject.PDF: "AD report PDF",
            OutputObject.RRD_SR: "organ dose RRD SR",
        }[obj]
        if self.kind is ResultKind.COURSE:
            what = "cumulative " + what
        return f"theranode Lu-177 {what} {self.label}"

    def series_number(self, obj: OutputObject) -> int:
        """Series Number: 91nn RT Dose, 92nn SR, 93nn PDF, 94nn RRD SR; nn = cycle, 99 = course."""
        offset = self.cycle_number if self.kind is ResultKind.CYCLE else 99
        return obj.series_number_base + int(offset or 0)


@dataclass(frozen=True)
class OutputUids:
    """The UIDs of one written object."""

    series_instance_uid: str
    sop_instance_uid: str


def derive_uid(*parts: str) -> str:
    """A ``2.25`` UID that is a pure function of ``parts``.

    The parts are joined with a separator that cannot occur in a UID, hashed
    into a name-based UUID (RFC 4122 version 5) and written as its integer.
    """
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(THERANODE_NAMESPACE, name).int}"


def input_fingerprint(source: SourceContext) -> tuple[str, ...]:
    """The input UIDs a result depends on, in a canonical order."""
    referenced = sorted(ref.sop_instance_uid for ref in source.all_instances)
    return (source.study_instance_uid, source.frame_of_reference_uid, *referenced)


def output_uids(
    source: SourceContext, identity: ResultIdentity, obj: OutputObject
) -> OutputUids:
    """Series and SOP Instance UIDs of ``obj`` for this result and these inputs.

    The series UID depends on the patient, the result (kind, cycle, version)
    and the object kind; the instance UID additionally on every input UID.
    """
    series_parts = (
        "series",
        source.patient_key,
        source.study_instance_uid,
        identity.kind.value,
        str(identity.cycle_number or 0),
        str(identity.version),
        obj.value,
    )
    series_uid = derive_uid(*series_parts)
    instance_uid = derive_uid("instance", series_uid, *input_fingerprint(source))
    logger.debug(
        "Derived %s UIDs for %s: series %s", obj.value, identity.label, series_uid
    )
    return OutputUids(series_instance_uid=series_uid, sop_instance_uid=instance_uid)


def tracking_uid(source: SourceContext, roi_name: str) -> str:
    """Tracking UID of a VOI: the same for the same patient and ROI name in every cycle."""
    return derive_uid("tracking", source.patient_key, roi_name.strip().lower())


def device_uid() -> str:
    """Device Observer UID of theranode (constant across installations and versions)."""
    return derive_uid("device", MANUFACTURER)
