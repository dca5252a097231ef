"""Cycles that are stored whole but are bad for dosimetry, one victim patient each.

Every victim is the synthetic course's cycle 1 (four SPECT/CT time points and
an RTSTRUCT) written for its own patient and seed, then spoiled with pydicom
in one way a real archive can hold: contours outside the image, SPECT counts
all zero or absurdly scaled, CT numbers far outside the Hounsfield scale, a
radionuclide other than Lu-177, SPECTs in no CT's frame of reference. Every
object is still a valid DICOM instance the node stores with Success; the
damage shows only when the cycle is processed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.reliability.course_runs import FAULT_SUPERSAMPLING
from theranode.dicomio.synthetic_course import CourseManifest, CourseWriteSpec, write_course

FAR_AWAY_MM = 5000.0  # contours moved this far along x: outside every image


@dataclass(frozen=True)
class BadCycle:
    """A victim patient's written cycle and how it was spoiled."""

    name: str
    patient_id: str
    manifest: CourseManifest


def _edit(files: tuple[Path, ...] | list[Path], change: Callable[[Dataset], None]) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)


def _spects(m: CourseManifest) -> list[Path]:
    return [f for tp in m.time_points for f in tp.spect_files]


def _cts(m: CourseManifest) -> list[Path]:
    return [f for tp in m.time_points for f in tp.ct_files]


def _rtstructs(m: CourseManifest) -> list[Path]:
    return [tp.rtstruct_file for tp in m.time_points if tp.rtstruct_file is not None]


def _contours_outside(ds: Dataset) -> None:
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            points = [float(v) for v in contour.ContourData]
            contour.ContourData = [v + FAR_AWAY_MM if i % 3 == 0 else v
                                   for i, v in enumerate(points)]


def _zero_counts(ds: Dataset) -> None:
    ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()


def _huge_counts(ds: Dataset) -> None:
    ds.PixelData = np.full_like(ds.pixel_array, np.iinfo(ds.pixel_array.dtype).max).tobytes()
    ds.RescaleSlope = "1e+30"
    for item in ds.get("RealWorldValueMappingSequence", []):
        item.RealWorldValueSlope = 1e30


def _absurd_hu(ds: Dataset) -> None:
    ds.RescaleIntercept = "30000"


def _technetium(ds: Dataset) -> None:
    item = ds.RadiopharmaceuticalInformationSequence[0]
    code = item.RadionuclideCodeSequence[0]
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "C-B1036", "SRT", "^99m^Technetium")
    item.Radiopharmaceutical = "Tc-99m MDP"


def _foreign_frame(ds: Dataset) -> None:
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), "foreign"])


SPOILERS: dict[str, tuple[Callable[[CourseManifest], list[Path]], Callable[[Dataset], None]]] = {
    "contours-outside-image": (_rtstructs, _contours_outside),
    "spect-all-zero": (_spects, _zero_counts),
    "spect-absurdly-scaled": (_spects, _huge_counts),
    "ct-absurd-hu": (_cts, _absurd_hu),
    "spect-technetium": (_spects, _technetium),
    "spect-foreign-frame": (_spects, _foreign_frame),
}


def write_bad_cycles(root: Path, names: tuple[str, ...] = tuple(SPOILERS),
                     seed: int = 300) -> list[BadCycle]:
    """Write one spoiled cycle per name in ``names``, each for its own patient."""
    victims = []
    for i, name in enumerate(names):
        patient_id = f"VICTIM-{i:02d}"
        spec = CourseWriteSpec(cycles=(1,), patient_id=patient_id,
                               patient_name=f"Victim^{name.replace('-', '')}",
                               supersampling=FAULT_SUPERSAMPLING)
        manifest = write_course(root / name, spec, seed + i)
        files_of, spoil = SPOILERS[name]
        _edit(files_of(manifest), spoil)
        victims.append(BadCycle(name, patient_id, manifest))
    return victims
