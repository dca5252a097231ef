"""Which configured camera entry applies to a SPECT: its sensitivity and resolution.

One matching rule, used by the listener (to refuse at C-STORE time a SPECT
in counts from a camera with no calibration) and by the pipeline (to read
it): the first ``[[calibration.cameras]]`` entry whose non-empty
manufacturer, model and station name all equal the object's Manufacturer
(0008,0070), Manufacturer's Model Name (0008,1090) and Station Name
(0008,1010) wins; else ``default_cps_per_mbq`` when it is positive; else none.
The same entry states the camera's SPECT resolution for partial-volume
correction (:func:`spect_fwhm_mm`).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from theranode.config.schema import CalibrationSettings, CameraCalibration
from theranode.dicomio.nm import CountsCalibration


def camera_facts(ds: Dataset) -> dict[str, str]:
    """The header values a camera entry is matched on."""
    return {
        "manufacturer": str(ds.get("Manufacturer", "") or ""),
        "model_name": str(ds.get("ManufacturerModelName", "") or ""),
        "station_name": str(ds.get("StationName", "") or ""),
    }


def matching_camera(ds: Dataset, calibration: CalibrationSettings) -> CameraCalibration | None:
    """The first ``[[calibration.cameras]]`` entry that matches ``ds`` (none: ``None``)."""
    facts = camera_facts(ds)
    for camera in calibration.cameras:
        wanted = {k: getattr(camera, k) for k in facts}
        if all(not value or value == facts[k] for k, value in wanted.items()):
            return camera
    return None


def counts_calibration(ds: Dataset, calibration: CalibrationSettings) -> CountsCalibration | None:
    """The configured sensitivity of the camera that acquired ``ds`` (first match wins)."""
    camera = matching_camera(ds, calibration)
    if camera is not None:
        return CountsCalibration(camera.cps_per_mbq, calibration.correct_decay_during_acquisition)
    if calibration.default_cps_per_mbq > 0:
        return CountsCalibration(
            calibration.default_cps_per_mbq, calibration.correct_decay_during_acquisition
        )
    return None


def spect_fwhm_mm(ds: Dataset, calibration: CalibrationSettings) -> float | None:
    """The configured resolution (PSF FWHM, mm) of the camera that acquired ``ds``.

    The matching entry's ``spect_fwhm_mm``, else ``default_spect_fwhm_mm``;
    ``None`` when neither is stated (0).
    """
    camera = matching_camera(ds, calibration)
    fwhm = camera.spect_fwhm_mm if camera is not None and camera.spect_fwhm_mm > 0 else 0.0
    fwhm = fwhm or calibration.default_spect_fwhm_mm
    return fwhm if fwhm > 0 else None
