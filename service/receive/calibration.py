"""Which configured camera sensitivity applies to a SPECT in counts.

One matching rule, used by the listener (to refuse at C-STORE time a SPECT
in counts from a camera with no calibration) and by the pipeline (to read
it): the first ``[[calibration.cameras]]`` entry whose non-empty
manufacturer, model and station name all equal the object's Manufacturer
(0008,0070), Manufacturer's Model Name (0008,1090) and Station Name
(0008,1010) wins; else ``default_cps_per_mbq`` when it is positive; else none.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from theranode.config.schema import CalibrationSettings
from theranode.dicomio.nm import CountsCalibration


def camera_facts(ds: Dataset) -> dict[str, str]:
    """The header values a camera entry is matched on."""
    return {
        "manufacturer": str(ds.get("Manufacturer", "") or ""),
        "model_name": str(ds.get("ManufacturerModelName", "") or ""),
        "station_name": str(ds.get("StationName", "") or ""),
    }


def counts_calibration(ds: Dataset, calibration: CalibrationSettings) -> CountsCalibration | None:
    """The configured sensitivity of the camera that acquired ``ds`` (first match wins)."""
    facts = camera_facts(ds)
    for camera in calibration.cameras:
        wanted = {k: getattr(camera, k) for k in facts}
        if all(not value or value == facts[k] for k, value in wanted.items()):
            return CountsCalibration(
                camera.cps_per_mbq, calibration.correct_decay_during_acquisition
            )
    if calibration.default_cps_per_mbq > 0:
        return CountsCalibration(
            calibration.default_cps_per_mbq, calibration.correct_decay_during_acquisition
        )
    return None
