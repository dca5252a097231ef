"""Dose-volume histograms as the RT Dose DVH module and the PDF report need them.

The DVHs themselves are :class:`theranode.dosimetry.roi.CumulativeDvh` (computed by
:func:`theranode.dosimetry.roi.cumulative_dvh`); this room only checks that a DVH can
be written as DICOM DVH Data and computes a set of them from masks.

References
----------
DICOM PS3.3 C.8.8.4 (RT DVH module: cumulative DVH Data is a list of
(bin width, volume) pairs whose widths add up from 0 Gy).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.roi import CumulativeDvh, cumulative_dvh
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)


def dvhs_from_masks(
    dose: Volume, masks: Mapping[str, npt.NDArray[Any] | Volume]
) -> dict[str, CumulativeDvh]:
    """Cumulative DVH of ``dose`` in every named mask; unusable masks are skipped with a warning."""
    result: dict[str, CumulativeDvh] = {}
    for name, mask in masks.items():
        try:
            result[name] = cumulative_dvh(dose, mask)
        except DosimetryError as error:
            logger.warning("No DVH for VOI %s: %s", name, error)
    return result


def dicom_bin_width_gy(dvh: CumulativeDvh) -> float | None:
    """The uniform bin width of ``dvh`` when it starts at 0 Gy, else ``None``.

    DICOM DVH Data accumulates bin widths from 0 Gy, so only such DVHs can
    be written without resampling.
    """
    bins = np.asarray(dvh.dose_bins, dtype=float)
    if bins.size < 2 or bins[0] != 0.0:
        return None
    steps = np.diff(bins)
    if steps[0] <= 0 or not np.allclose(steps, steps[0], rtol=1e-6):
        return None
    return float(steps[0])
