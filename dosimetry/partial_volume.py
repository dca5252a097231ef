"""How the engine corrects one time point's VOI means for partial volume.

Reconstructed Lu-177 SPECT is blurred (10-15 mm FWHM), so a VOI drawn on its
CT edge reads its mean concentration low (spill-out) and takes in spill-in
from its neighbours. Three methods are offered, chosen by
:class:`PartialVolumeMethod`; each gives, per VOI and time point, a factor
*corrected / observed* for the VOI's mean concentration (and so for its mean
LED dose rate, which is proportional to it at fixed density), applied to the
curve point before the kinetic fit:

``paper`` (default)
    No correction per time point; lesions (and marrow if configured) are
    divided by RC(volume) after the fit, as Hebert et al. 2024 do.
``paper-contrast``
    Lesions only, per time point: the sphere model *observed = RC·C_lesion +
    (1 − RC)·C_background* solved for C_lesion, with RC(volume) from the
    site's curve (which must then be measured in a cold background) and the
    background measured in a shell 1-2 FWHM around the lesion
    (:func:`theranode.dosimetry.pvc.contrast_corrected_mean`). A sphere RC
    measured cold over-corrects a lesion in warm liver; this does not.
``gtm``
    Every VOI, per time point: the geometric transfer matrix over all VOIs and
    the rest of the body as background (Rousset 1998) gives the VOI means; the
    dose map is computed from the region-based voxel-wise corrected image
    (RBV, Thomas 2011), and then, like every map, scaled within each VOI to
    the reported mean.

References
----------
Rousset OG, Ma Y, Evans AC. Correction for partial volume effects in PET:
principle and validation. J Nucl Med 1998;39:904-911.
Thomas BA et al. The importance of appropriate partial volume correction for
PET quantification in Alzheimer's disease. Eur J Nucl Med Mol Imaging
2011;38:1104-1119.
Dewaraja YK et al. MIRD Pamphlet No. 23. J Nucl Med 2012;53:1310-1325.
Hebert K et al. J Nucl Med 2024;65:923-930.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.pvc import (
    PointSpread,
    PvcRegion,
    background_shell,
    contrast_corrected_mean,
    disjoint_regions,
    gtm,
    occupancy,
    region_based_voxelwise,
)
from theranode.dosimetry.recovery import RecoveryCurve
from theranode.dosimetry.registration import RigidRegistration
from theranode.dosimetry.results import VoiKind
from theranode.dosimetry.volume import Volume, average_onto

logger = logging.getLogger(__name__)

#: CT numbers above this belong to the patient (the background region of GTM).
BODY_THRESHOLD_HU = -500.0


class PartialVolumeMethod(str, Enum):
    """How VOI means are corrected for the camera's resolution (module docstring)."""

    PAPER = "paper"
    PAPER_CONTRAST = "paper-contrast"
    GTM = "gtm"

    @property
    def description(self) -> str:
        """One line for reports."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    PartialVolumeMethod.PAPER: "recovery coefficient RC(volume) for lesions (Hebert 2024)",
    PartialVolumeMethod.PAPER_CONTRAST: (
        "recovery coefficient RC(volume) for lesions with their local background "
        "(sphere model, MIRD 23)"
    ),
    PartialVolumeMethod.GTM: (
        "geometric transfer matrix for every VOI (Rousset 1998); map by region-based "
        "voxel-wise correction (Thomas 2011)"
    ),
}


@dataclass(frozen=True, eq=False)
class VoiOnGrid:
    """One VOI as a time point sees it.

    Attributes
    ----------
    name, kind:
        The VOI.
    source:
        Its boolean mask on the CT grid it was drawn on.
    registration:
        Maps the SPECT grid's points into ``source`` (``None``: same frame).
    measure:
        The engine's mask on the SPECT grid: the voxels its mean is taken over.
    volume_ml:
        Its volume on the CT grid.
    """

    name: str
    kind: VoiKind
    source: Volume
    registration: RigidRegistration | None
    measure: npt.NDArray[np.bool_]
    volume_ml: float


@dataclass(frozen=True, eq=False)
class TimePointCorrection:
    """A time point's partial-volume correction.

    Attributes
    ----------
    factors:
        Corrected / observed mean concentration per VOI corrected here (VOIs
        absent are left as observed).
    activity:
        The voxel-wise corrected activity image for the dose map (``gtm``
        only), else ``None``.
    psf_sensitivity:
        Per VOI, the signed relative change of its corrected mean when the PSF
        FWHM grows by ``fwhm_step_mm`` (the uncertainty budget's partial-volume
        input), when asked for.
    notes:
        Per VOI, what was done (for the VOI's notes).
    """

    factors: dict[str, float] = field(default_factory=dict)
    activity: Volume | None = None
    psf_sensitivity: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def body_occupancy(ct: Volume, grid: Volume) -> npt.NDArray[np.float32]:
    """Fraction of each ``grid`` voxel inside the patient (CT > −500 HU).

    Box-averaged on the CT grid by the integer bin factor closest to the grid's
    voxel, then linearly resampled (as the engine averages density).
    """
    inside = ct.with_array((ct.array > BODY_THRESHOLD_HU).astype(np.float32), unit="fraction")
    out = average_onto(inside, grid, default_value=0.0)
    return np.clip(np.asarray(out.array, dtype=np.float32), 0.0, 1.0)


def _regions(
    vois: Sequence[VoiOnGrid], grid: Volume, ct: Volume
) -> list[PvcRegion]:
    entries = [
        (v.name, occupancy(v.source, grid, v.registration), v.measure) for v in vois
    ]
    return disjoint_regions(entries, body_occupancy(ct, grid))


def _factor(true_mean: float, activity: Volume, voi: VoiOnGrid) -> float:
    """True / observed mean, observed over the voxels the engine averages (``measure``).

    GTM measures a VOI on its own voxels only (a lesion carves the liver it
    lies in); the engine's curve point averages the VOI's whole mask, so the
    factor is taken against that mean and the corrected point is the GTM value.
    """
    observed = float(activity.array[voi.measure].mean())
    if not observed > 0:
        raise DosimetryError(
            f"VOI {voi.name!r} holds no activity on the SPECT ({observed:.3g} "
            f"{activity.unit}); its partial-volume correction has nothing to scale. Check the "
            "VOI's position and the SPECT's calibration."
        )
    return true_mean / observed


def gtm_correction(
    activity: Volume,
    ct: Volume,
    vois: Sequence[VoiOnGrid],
    psf: PointSpread,
    fwhm_step_mm: float = 0.0,
) -> TimePointCorrection:
    """GTM factors for every VOI and the RBV image for the map (module docstring).

    With ``fwhm_step_mm`` > 0 the GTM is solved again with the PSF widened by
    it, and the relative change of each VOI's corrected mean is returned as
    its PSF sensitivity.
    """
    regions = _regions(vois, activity, ct)
    solved = gtm(activity, regions, psf)
    factors = {v.name: _factor(solved.true_mean(v.name), activity, v) for v in vois}
    rbv = region_based_voxelwise(activity, regions, solved.true_means, psf)
    sensitivity: dict[str, float] = {}
    if fwhm_step_mm > 0:
        wider = gtm(activity, regions, PointSpread(psf.fwhm_mm + fwhm_step_mm))
        sensitivity = {
            v.name: wider.true_mean(v.name) / solved.true_mean(v.name) - 1.0 for v in vois
        }
    notes = {
        v.name: (
            f"partial volume: GTM over {len(regions)} regions (PSF {psf.fwhm_mm:g} mm FWHM, "
            f"condition number {solved.condition_number:.3g})"
        )
        for v in vois
    }
    return TimePointCorrection(factors, rbv, sensitivity, notes)


def contrast_correction(
    activity: Volume,
    vois: Sequence[VoiOnGrid],
    psf: PointSpread,
    curve: RecoveryCurve,
) -> TimePointCorrection:
    """Lesion factors from RC(volume) and each lesion's local background."""
    lesions = [v for v in vois if v.kind is VoiKind.LESION]
    factors: dict[str, float] = {}
    notes: dict[str, str] = {}
    for lesion in lesions:
        others = np.zeros(activity.shape, dtype=bool)
        for other in lesions:
            if other is not lesion:
                others |= other.measure
        shell = background_shell(lesion.measure, psf, activity.spacing_mm, others)
        if not shell.any():
            raise DosimetryError(
                f"Lesion {lesion.name!r} has no background voxel around it on the SPECT grid "
                "(other lesions or the field of view's edge surround it); its contrast-aware "
                "recovery cannot be computed. Use the 'paper' or 'gtm' partial-volume method."
            )
        observed = float(activity.array[lesion.measure].mean())
        background = float(activity.array[shell].mean())
        rc = curve.coefficient(lesion.volume_ml)
        corrected = contrast_corrected_mean(observed, background, rc)
        factors[lesion.name] = corrected / observed
        notes[lesion.name] = (
            f"partial volume: RC({lesion.volume_ml:.3g} mL) = {rc:.3f} with the local "
            f"background (PSF {psf.fwhm_mm:g} mm FWHM)"
        )
    return TimePointCorrection(factors, None, {}, notes)
