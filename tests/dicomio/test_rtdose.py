"""RT Dose writer: values, geometry, references, determinism and real readers."""

from __future__ import annotations

import dataclasses
import itertools
import math
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pydicom.dicomio
import pytest
import SimpleITK as sitk

if not hasattr(pydicom.dicomio, "read_file"):
    # dicompyler-core 0.5.6 (its latest release) imports pydicom's read_file,
    # which pydicom 3 removed; dcmread is the same function under its new name.
    pydicom.dicomio.read_file = pydicom.dcmread  # type: ignore[attr-defined]

from dicompylercore import dicomparser, dvh, dvhcalc

from tests.dicomio.result_records import (
    LESION_BOX,
    LIVER_BOX,
    box_mask,
    course_result,
    cycle_result,
    dose_map,
    identity,
    reference_ct,
    source_for_cycle,
    structure_set,
)
from tests.part10_bytes import read_back
from tests.peers import require_tool
from theranode.dicomio.errors import (
    DicomInputError,
    MissingAttributeError,
    UnsupportedObjectError,
)
from theranode.dicomio.part10 import encode
from theranode.dicomio.rtdose import (
    DOSE_SUMMATION_TYPE,
    course_rt_dose,
    cycle_rt_dose,
    dose_grid_scaling,
    read_rt_dose,
    write_rt_dose,
)
from theranode.dicomio.source import course_source_context, source_context_from_datasets
from theranode.dicomio.uids import ResultKind
from theranode.dosimetry.roi import cumulative_dvh
from theranode.dosimetry.volume import Volume, resample

#: A rotation of 30 degrees about the patient z axis (columns are the index axes).
COS, SIN = math.cos(math.pi / 6), math.sin(math.pi / 6)
ROTATED = (COS, -SIN, 0.0, SIN, COS, 0.0, 0.0, 0.0, 1.0)
#: The same rotation with the slice axis pointing against the slice normal.
ROTATED_FLIPPED = (COS, -SIN, 0.0, SIN, COS, 0.0, 0.0, 0.0, -1.0)


def _round_trip(dose: Volume, bits: int = 16) -> tuple[pydicom.Dataset, bytes]:
    source, _ = source_for_cycle(dose=dose)
    ds = write_rt_dose(dose, source, identity(), bits=bits)
    data = encode(ds)
    return read_back(data), data


def _on_original_grid(read: Volume, original: Volume) -> np.ndarray:
    """``read`` sampled at the voxel centres of ``original`` (nearest neighbour)."""
    return resample(read, original, interpolation="nearest", default_value=np.nan).array


@pytest.mark.parametrize("bits", [16, 32])
def test_values_and_geometry_round_trip(bits: int) -> None:
    dose = dose_map()
    back, _ = _round_trip(dose, bits)
    volume = read_rt_dose(back)
    assert volume.same_grid(dose)
    scaling = float(back.DoseGridScaling)
    assert np.max(np.abs(volume.array - dose.array)) <= scaling / 2 * (1 + 1e-9)
    assert back.BitsAllocated == bits
    # The largest dose uses the full range (the scaling is rounded up by 1e-9).
    assert back.pixel_array.max() >= (2**bits - 1) * (1 - 1e-8)


@pytest.mark.parametrize(
    "direction", [ROTATED, ROTATED_FLIPPED], ids=["rotated", "flipped"]
)
def test_non_identity_direction_keeps_every_voxel_in_place(
    direction: tuple[float, ...],
) -> None:
    dose = dose_map(direction=direction)
    back, _ = _round_trip(dose)
    volume = read_rt_dose(back)
    offsets = [float(v) for v in back.GridFrameOffsetVector]
    assert offsets[0] == 0.0 and all(b > a for a, b in itertools.pairwise(offsets))
    np.testing.assert_allclose(
        _on_original_grid(volume, dose), dose.array, atol=float(back.DoseGridScaling)
    )


@pytest.mark.parametrize(
    "direction", [None, ROTATED, ROTATED_FLIPPED], ids=["axial", "rotated", "flipped"]
)
def test_simpleitk_gdcm_reads_same_values_and_geometry(
    tmp_path: Path, direction: tuple[float, ...] | None
) -> None:
    dose = dose_map(direction=direction)
    _, data = _round_trip(dose)
    path = tmp_path / "dose.dcm"
    path.write_bytes(data)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    scaling = float(
        reader.GetMetaData("3004|000e")
    )  # GDCM leaves Dose Grid Scaling to us
    read = Volume.from_sitk(image, unit="Gy")
    read = read.with_array(read.array.astype(float) * scaling)
    np.testing.assert_allclose(read.spacing_mm, dose.spacing_mm)
    np.testing.assert_allclose(_on_original_grid(read, dose), dose.array, atol=scaling)


def test_dicompyler_reads_dose_and_dvh(tmp_path: Path) -> None:
    dose = dose_map()
    source, rtss = source_for_cycle(dose=dose)
    dvhs = {"liver": cumulative_dvh(dose, box_mask(LIVER_BOX))}
    ds = read_back(encode(write_rt_dose(dose, source, identity(), dvhs=dvhs)))
    data = dicomparser.DicomParser(ds).GetDoseData()
    scaling = float(ds.DoseGridScaling)
    assert data["dosemax"] * scaling == pytest.approx(dose.array.max(), abs=scaling)
    assert (
        data["doseunits"] == "GY" and data["dosesummationtype"] == DOSE_SUMMATION_TYPE
    )
    # The DVH module as dicompyler reads it equals the DVH written.
    stored = dvh.DVH.from_dicom_dvh(ds, 1)
    np.testing.assert_allclose(stored.counts, dvhs["liver"].volume_ml_at(), rtol=1e-9)
    # dicompyler's own DVH from the contours sees the same voxels and doses.
    computed = dvhcalc.get_dvh(rtss, ds, 1)
    inside = dose.array[box_mask(LIVER_BOX)]
    assert computed.max == pytest.approx(inside.max(), abs=0.01 + scaling)
    assert computed.min == pytest.approx(inside.min(), abs=0.01 + scaling)
    assert computed.mean == pytest.approx(inside.mean(), abs=0.01 + scaling)


def test_identity_references_and_labels() -> None:
    dose = dose_map()
    source, rtss = source_for_cycle(dose=dose)
    ds = read_back(encode(cycle_rt_dose(cycle_result(2, dose), source, identity(cycle=2))))
    assert (ds.PatientID, ds.PatientName, ds.StudyInstanceUID) == (
        source.patient_id,
        source.patient_name,
        source.study_instance_uid,
    )
    assert ds.FrameOfReferenceUID == source.frame_of_reference_uid
    assert ds.SeriesDescription == "theranode Lu-177 AD cycle 2 v1"
    assert (ds.Manufacturer, ds.DoseType, ds.DoseUnits) == (
        "theranode",
        "PHYSICAL",
        "GY",
    )
    assert ds.FrameIncrementPointer == 0x3004000C
    overview = ds.PlanOverviewSequence[0]
    assert (
        overview.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
        == rtss.SOPInstanceUID
    )
    assert overview.CurrentFractionNumber == 2
    referenced = {
        item.ReferencedSOPInstanceUID for item in ds.ReferencedInstanceSequence
    }
    assert referenced == {ref.sop_instance_uid for ref in source.images}
    other = ds.StudiesContainingOtherReferencedInstancesSequence[0]
    assert other.StudyInstanceUID == source.source_images[0].study_instance_uid
    assert ds.ContentDate == "20240301" and ds.ContentTime.startswith("143005")


def test_same_inputs_same_bytes_new_version_new_series() -> None:
    dose = dose_map()
    source, _ = source_for_cycle(dose=dose)
    first = encode(write_rt_dose(dose, source, identity()))
    again = encode(
        write_rt_dose(dose_map(), source_for_cycle(dose=dose)[0], identity())
    )
    assert first == again
    v2 = write_rt_dose(dose, source, identity(version=2))
    assert v2.SeriesInstanceUID != read_back(first).SeriesInstanceUID
    assert v2.SeriesDescription.endswith("v2")


def test_course_dose_counts_cycles_as_fractions() -> None:
    dose = dose_map()
    source, _ = source_for_cycle(dose=dose)
    ds = course_rt_dose(course_result(dose), source, identity(ResultKind.COURSE))
    overview = ds.PlanOverviewSequence[0]
    assert overview.NumberOfFractionsIncluded == 2
    assert "CurrentFractionNumber" not in overview
    assert ds.SeriesDescription == "theranode Lu-177 cumulative AD course v1"


def test_scaling_is_rounded_up_and_short() -> None:
    for max_gy in (1e-6, 0.3, 14.399999999999999, 287.89, 1e5):
        text = dose_grid_scaling(max_gy)
        assert len(text) <= 16
        assert round(max_gy / float(text)) <= 2**16 - 1
    assert dose_grid_scaling(0.0) == "1"


def test_bad_maps_are_refused_with_reasons() -> None:
    dose = dose_map()
    source, _ = source_for_cycle(dose=dose)
    with pytest.raises(UnsupportedObjectError, match="Gy"):
        write_rt_dose(dose.with_array(dose.array, unit="Gy/h"), source, identity())
    nan = dose.array.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(DicomInputError, match="NaN"):
        write_rt_dose(dose.with_array(nan), source, identity())
    negative = dose.array.copy()
    negative[0, 0, 0] = -1.0
    with pytest.raises(DicomInputError, match="negative"):
        write_rt_dose(dose.with_array(negative), source, identity())
    sheared = Volume(
        dose.array, dose.spacing_mm, direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1), unit="Gy"
    )
    with pytest.raises(DicomInputError, match="orthogonal"):
        write_rt_dose(sheared, source, identity())


def _dciodvfy(path: Path) -> str:
    tool = require_tool("dciodvfy")
    run = subprocess.run(
        [tool, str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    return run.stdout + run.stderr


@pytest.mark.peer
@pytest.mark.parametrize("kind", [ResultKind.CYCLE, ResultKind.COURSE])
def test_dciodvfy_finds_no_error(tmp_path: Path, kind: ResultKind) -> None:
    dose = dose_map(direction=ROTATED)
    source, _ = source_for_cycle(dose=dose)
    dvhs = {
        "liver": cumulative_dvh(dose, box_mask(LIVER_BOX)),
        "lesion 1": cumulative_dvh(dose, box_mask(LESION_BOX)),
    }
    if kind is ResultKind.CYCLE:
        ds = cycle_rt_dose(cycle_result(1, dose), source, identity(), dvhs=dvhs)
    else:
        ds = course_rt_dose(course_result(dose), source, identity(kind), dvhs=dvhs)
    path = tmp_path / "dose.dcm"
    path.write_bytes(encode(ds))
    report = _dciodvfy(path)
    assert "Error" not in report, report
    # The only warnings are the ones docs/conformance.md explains.
    warnings = [line for line in report.splitlines() if line.startswith("Warning")]
    explained = ("PLAN_OVERVIEW", "not present in standard DICOM IOD")
    assert all(any(e in w for e in explained) for w in warnings), warnings


def test_source_context_refuses_inconsistent_inputs() -> None:
    ct = reference_ct(3, key="s1")
    other_frame = structure_set(
        reference_ct(3, key="s2"), dose_map(), {"liver": LIVER_BOX}, "s2"
    )
    with pytest.raises(DicomInputError, match="frame"):
        source_context_from_datasets(ct, structure_set=other_frame)
    del ct[0].PatientID
    with pytest.raises(MissingAttributeError, match="PatientID"):
        source_context_from_datasets(ct)


def test_course_source_keeps_first_cycle_identity_and_all_inputs() -> None:
    first, _ = source_for_cycle(key="c1")
    second, _ = source_for_cycle(key="c2")
    course = course_source_context([first, second])
    assert course.study_instance_uid == first.study_instance_uid
    assert course.frame_of_reference_uid == first.frame_of_reference_uid
    assert {r.sop_instance_uid for r in second.all_instances} <= {
        r.sop_instance_uid for r in course.all_instances
    }
    stranger = dataclasses.replace(second, patient_id="someone else")
    with pytest.raises(DicomInputError, match="patients"):
        course_source_context([first, stranger])
