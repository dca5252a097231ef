"""Small hand-made DICOM instances for node tests (headers that matter to filing).

These are deliberately minimal: the full, dciodvfy-clean synthetic course
comes from :mod:`theranode.dicomio.synthetic_course`; these let a test vary one attribute at a
time (a missing UID, a time-only injection, a foreign frame of reference).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: F401 (re-exported)

NM = "1.2.840.10008.5.1.4.1.1.20"
CT = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _base(sop_class: str, modality: str, patient_id: str, study: str, series: str,
          when: datetime) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "Test^Patient"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = modality
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.AcquisitionTime = when.strftime("%H%M%S")
    return ds


def _pixels(ds: Dataset, frames: int = 1, size: int = 8) -> None:
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.arange(size * size * frames, dtype=np.uint16).tobytes()


def nm(patient_id: str, injection: datetime | None, acquired: datetime, *,
       frame: str | None = None, study: str | None = None, time_only: bool = False,
       radionuclide_code: str = "447553000", event_uid: str | None = None) -> Dataset:
    ds = _base(NM, "NM", patient_id, study or generate_uid(), generate_uid(), acquired)
    ds.FrameOfReferenceUID = frame or generate_uid()
    if injection is not None:
        item = Dataset()
        item.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
        if not time_only:
            item.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S")
        item.RadionuclideTotalDose = "7400"
        code = Dataset()
        code.CodeValue = radionuclide_code
        code.CodingSchemeDesignator = "SCT"
        code.CodeMeaning = "^177^Lutetium" if radionuclide_code == "447553000" else "other"
        item.RadionuclideCodeSequence = Sequence([code])
        if event_uid:
            item.RadiopharmaceuticalAdministrationEventUID = event_uid
        ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    _pixels(ds, frames=4)
    return ds


def ct(patient_id: str, acquired: datetime, *, frame: str, study: str | None = None,
       series: str | None = None) -> Dataset:
    ds = _base(CT, "CT", patient_id, study or generate_uid(), series or generate_uid(), acquired)
    ds.FrameOfReferenceUID = frame
    _pixels(ds)
    return ds


def rtstruct(patient_id: str, when: datetime, *, referenced_frame: str) -> Dataset:
    ds = _base(RTSTRUCT, "RTSTRUCT", patient_id, generate_uid(), generate_uid(), when)
    ref = Dataset()
    ref.FrameOfReferenceUID = referenced_frame
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    return ds


def encode(ds: Dataset) -> bytes:
    """Part-10 bytes of ``ds`` (preamble, file meta, data set)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def scan_times(injection: datetime, hours: list[float]) -> list[datetime]:
    return [injection + timedelta(hours=h) for h in hours]
