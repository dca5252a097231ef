"""CT Image Storage series → :class:`~theranode.dosimetry.volume.Volume` in HU.

References
----------
DICOM PS3.3 A.3 (CT Image IOD), C.8.2.1 (CT Image module: Rescale Slope and
Intercept map stored values to Hounsfield units), C.7.6.2 (Image Plane).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from theranode.dicomio.errors import InconsistentSeriesError, UnsupportedObjectError
from theranode.dicomio.series import sort_slices
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def read_ct_series(datasets: Sequence[Dataset]) -> Volume:
    """Stack the instances of one axial CT series into a HU volume.

    The slices are sorted along the normal of their orientation, so the
    volume's third index axis points along ``row × column``; the origin is
    the first sorted slice's Image Position (Patient).

    Parameters
    ----------
    datasets:
        Every instance of the series (any order), pixel data included.

    Returns
    -------
    Volume
        ``float32`` HU, unit ``"HU"``; ``metadata`` holds
        ``series_instance_uid``, ``frame_of_reference_uid`` and
        ``sop_instance_uids`` (in slice order).

    Raises
    ------
    UnsupportedObjectError
        Not single-frame CT Image Storage.
    InconsistentSeriesError
        Mixed series or frames of reference, uneven spacing, tilt, duplicates.
    """
    for ds in datasets:
        _check_ct(ds)
    _check_same(datasets, "SeriesInstanceUID")
    _check_same(datasets, "FrameOfReferenceUID")
    ordered, geometry = sort_slices(datasets)
    first = ordered[0]
    array = np.empty((len(ordered), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, ds in enumerate(ordered):  # slice by slice: no full-size float64 copy
        if (int(ds.Rows), int(ds.Columns)) != array.shape[1:]:
            raise InconsistentSeriesError(
                f"CT slice {ds.get('SOPInstanceUID')} is {ds.Rows}×{ds.Columns} but the series "
                f"starts with {array.shape[1]}×{array.shape[2]}; all slices must match."
            )
        array[k] = hounsfield(ds)
    logger.debug(
        "Read CT series %s: %d slices, spacing %s mm",
        ordered[0].get("SeriesInstanceUID"),
        len(ordered),
        geometry.spacing_mm,
    )
    return Volume(
        array=array,
        spacing_mm=geometry.spacing_mm,
        origin_mm=geometry.origin_mm,
        direction=geometry.direction,
        unit="HU",
        metadata={
            "series_instance_uid": str(ordered[0].get("SeriesInstanceUID", "")),
            "frame_of_reference_uid": str(ordered[0].get("FrameOfReferenceUID", "")),
            "sop_instance_uids": tuple(str(ds.SOPInstanceUID) for ds in ordered),
        },
    )


def hounsfield(ds: Dataset) -> npt.NDArray[np.float64]:
    """Stored pixel values of one slice through Rescale Slope/Intercept (HU)."""
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return np.asarray(ds.pixel_array, dtype=np.float64) * slope + intercept


def _check_ct(ds: Dataset) -> None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != CT_IMAGE_STORAGE or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise UnsupportedObjectError(
            f"Expected single-frame CT Image Storage ({CT_IMAGE_STORAGE}), found SOP class "
            f"{sop_class!r} with {ds.get('NumberOfFrames', 1)} frame(s). Enhanced CT is not "
            "read; export the series as classic CT images."
        )


def _check_same(datasets: Sequence[Dataset], keyword: str) -> None:
    values = {str(ds.get(keyword, "")) for ds in datasets}
    if len(values) > 1:
        raise InconsistentSeriesError(
            f"The instances carry {len(values)} different {keyword} values; pass the "
            "instances of one series only."
        )
