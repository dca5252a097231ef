"""Rigid CT-to-CT registration of the time points of a cycle.

The paper registers every SPECT/CT of a cycle rigidly onto the first CT (the
reference) and propagates the VOIs drawn there (Hebert et al. 2024, Methods).
This room does that registration with SimpleITK and resamples volumes
(SPECT activity, masks) through the result.

Conventions
-----------
* The *fixed* image is the reference CT, the *moving* image a later CT.
* Following ITK, the transform maps **fixed (reference) points to moving
  points**: to bring a moving-space volume onto a reference grid, resample it
  with this transform (:func:`resample_to_reference`). SPECT and CT of one
  time point share a frame of reference, so the CT's transform also carries
  its SPECT.
* :class:`RigidRegistration` holds a 3-D Euler transform
  ``x' = R (x - c) + c + t`` with rotation angles about the patient x, y and z
  axes and the centre of rotation ``c`` at the centre of the reference body.
  ``translation_mm`` is ``t``: the displacement of that body centre.

Design choices
--------------
* **Metric.** CT to CT is a same-modality problem: Hounsfield units are
  calibrated (water 0, air −1000) and the paper keeps the tube voltage between
  the reference and the low-dose CTs, so the identity intensity mapping holds
  and the sum of squared differences is the maximum-likelihood metric for
  Gaussian noise (Hajnal, Hill & Hawkes, *Medical Image Registration*, 2001,
  ch. 3). Mean squares is the default; HU are clipped to a window so that
  metal or contrast cannot dominate it. Normalised correlation (robust to a
  global HU scale change) and Mattes mutual information (other modalities)
  are options.
* **Mask.** The metric is evaluated inside the body of the reference CT
  (HU above −500, largest connected component, closed, holes filled), which
  leaves out the couch: the couch stays at the same scanner position while
  the patient moves and would pull the solution towards identity.
* **Speed.** Both CTs are first averaged down (bin shrink) to about
  ``working_spacing_mm``; the registration then runs a 3-level pyramid with
  Gaussian smoothing on a random sample of the masked voxels, with a capped
  number of regular-step gradient-descent iterations. Parameter scales come
  from physical shifts, so a step of 1 is about 1 mm of motion.

References
----------
Hebert K et al., J Nucl Med 2024;65:923-930 (rigid registration on the first CT).
Yaniv Z, Lowekamp BC, Johnson HJ, Beare R. SimpleITK image-analysis notebooks,
J Digit Imaging 2018;31:290-303 (multi-resolution rigid registration).
Mattes D et al., IEEE Trans Med Imaging 2003;22:120-128 (mutual information).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from theranode.dosimetry.errors import GeometryError, RegistrationError
from theranode.dosimetry.results import RegistrationQuality
from theranode.dosimetry.volume import Vector3, Volume, resample

logger = logging.getLogger(__name__)

#: Euler3D parameters: angles about x, y, z (radians) then translation (mm).
EulerParameters = tuple[float, float, float, float, float, float]


class SimilarityMetric(str, Enum):
    """Image similarity metric optimised by the registration."""

    MEAN_SQUARES = "mean-squares"
    CORRELATION = "correlation"
    MATTES_MUTUAL_INFORMATION = "mattes-mutual-information"


class InitialAlignment(str, Enum):
    """How the transform is initialised before optimisation.

    ``AUTO`` evaluates the metric, on the coarsest level, for the scanner
    coordinates as they are (identity), for the centres of the two image
    geometries aligned and for the centres of mass of the two bodies aligned,
    and starts from the best one. Scanner coordinates are right when the
    table reference did not change between sessions; aligned centres are
    right when it did but both scans cover the same body range.
    """

    AUTO = "auto"
    IDENTITY = "identity"
    GEOMETRY = "geometry"
    MOMENTS = "moments"


@dataclass(frozen=True)
class RegistrationSettings:
    """Knobs of the rigid CT-to-CT registration (defaults suit abdominal CT).

    Attributes
    ----------
    metric:
        Similarity metric (see module notes for the choice).
    initial_alignment:
        Initialisation strategy.
    working_spacing_mm:
        Both CTs are bin-shrunk by integer factors to about this spacing
        before the pyramid starts.
    shrink_factors, smoothing_sigmas_mm:
        Pyramid levels (relative to the working grid) and the Gaussian
        smoothing applied at each level, in millimetres.
    sampling_percentage:
        Fraction (0-1] of the voxels sampled by the metric per level.
    min_sampled_voxels, max_sampled_voxels:
        The fraction is raised on small images and lowered on large ones so
        that between these many body voxels are sampled at the finest level
        (the cap bounds the time per iteration on clinical CTs).
    max_iterations:
        Iteration cap per level.
    learning_rate_mm, min_step_mm, relaxation_factor:
        Regular-step gradient descent: first step, stopping step, step
        reduction at each direction change (steps in ~mm of motion). With
        0.5 the step collapsed before the optimum on clinical CTs (errors up
        to 1 mm); 0.7 reached 0.05 mm for the same time.
    body_threshold_hu:
        HU above which a voxel belongs to the body mask.
    intensity_window_hu:
        HU are clipped to this window before the metric is computed.
    closing_radius_mm:
        Radius of the morphological closing of the body mask.
    random_seed:
        Seed of the metric's random voxel sampling (reproducible results).
    max_translation_mm, max_rotation_deg:
        A result beyond these is implausible for a patient repositioned on
        the same couch and raises :class:`RegistrationError`.
    """

    metric: SimilarityMetric = SimilarityMetric.MEAN_SQUARES
    initial_alignment: InitialAlignment = InitialAlignment.AUTO
    working_spacing_mm: float = 3.0
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (4.0, 2.0, 0.0)
    sampling_percentage: float = 0.10
    min_sampled_voxels: int = 60_000
    max_sampled_voxels: int = 80_000
    max_iterations: int = 200
    learning_rate_mm: float = 2.0
    min_step_mm: float = 1e-3
    relaxation_factor: float = 0.7
    body_threshold_hu: float = -500.0
    intensity_window_hu: tuple[float, float] = (-1000.0, 1500.0)
    closing_radius_mm: float = 6.0
    random_seed: int = 20240923
    max_translation_mm: float = 200.0
    max_rotation_deg: float = 25.0

    def __post_init__(self) -> None:
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            raise ValueError(
                f"shrink_factors {self.shrink_factors} and smoothing_sigmas_mm "
                f"{self.smoothing_sigmas_mm} must have one entry per pyramid level."
            )
        if not 0.0 < self.sampling_percentage <= 1.0:
            raise ValueError(
                f"sampling_percentage must be in (0, 1], got {self.sampling_percentage}."
            )
        object.__setattr__(self, "metric", SimilarityMetric(self.metric))
        object.__setattr__(
            self, "initial_alignment", InitialAlignment(self.initial_alignment)
        )


@dataclass(frozen=True)
class RigidRegistration:
    """The result of registering one CT onto the reference CT.

    The transform maps reference (fixed) points to moving points (ITK).

    Attributes
    ----------
    parameters:
        Euler3D parameters ``(angle_x, angle_y, angle_z [rad], t_x, t_y, t_z [mm])``.
    center_mm:
        Centre of rotation (patient LPS, mm).
    metric:
        The metric optimised.
    metric_before, metric_after:
        Metric value on the working grid within the body mask, with scanner
        coordinates as they are (before) and with the result (after). Lower
        is better for every metric (SimpleITK negates correlation and MI).
    converged:
        True when the optimiser stopped on its step-size criterion at the
        finest level and the metric did not get worse.
    iterations:
        Iterations at the finest level.
    stop_condition:
        The optimiser's own explanation of why it stopped.
    """

    parameters: EulerParameters
    center_mm: Vector3
    metric: SimilarityMetric
    metric_before: float
    metric_after: float
    converged: bool
    iterations: int = 0
    stop_condition: str = ""

    @classmethod
    def identity(cls, center_mm: Vector3 = (0.0, 0.0, 0.0)) -> RigidRegistration:
        """The identity registration (the reference time point onto itself)."""
        return cls(
            parameters=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            center_mm=center_mm,
            metric=SimilarityMetric.MEAN_SQUARES,
            metric_before=0.0,
            metric_after=0.0,
            converged=True,
            stop_condition="reference time point",
        )

    @classmethod
    def known(
        cls, affine: npt.ArrayLike, stop_condition: str = "known transform"
    ) -> RigidRegistration:
        """A registration given rather than estimated (a phantom's true pose, a reviewed one).

        ``affine`` is the 4×4 homogeneous matrix mapping reference points to
        moving points (patient LPS, mm); its 3×3 part must be a rotation.
        """
        matrix = np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.allclose(matrix[:3, :3] @ matrix[:3, :3].T, np.eye(3),
                                                     atol=1e-9):
            raise RegistrationError("A known registration needs a 4×4 rigid affine matrix.")
        euler = sitk.Euler3DTransform()
        euler.SetMatrix(tuple(float(v) for v in matrix[:3, :3].ravel()))
        euler.SetTranslation(tuple(float(v) for v in matrix[:3, 3]))
        return cls(
            parameters=tuple(float(p) for p in euler.GetParameters()),  # type: ignore[arg-type]
            center_mm=(0.0, 0.0, 0.0),
            metric=SimilarityMetric.MEAN_SQUARES,
            metric_before=0.0,
            metric_after=0.0,
            converged=True,
            stop_condition=stop_condition,
        )

    @property
    def translation_mm(self) -> Vector3:
        """Translation ``t`` of the body centre (mm)."""
        return (self.parameters[3], self.parameters[4], self.parameters[5])

    @property
    def rotation_deg(self) -> Vector3:
        """Euler angles about the patient x, y and z axes (degrees)."""
        return (
            math.degrees(self.parameters[0]),
            math.degrees(self.parameters[1]),
            math.degrees(self.parameters[2]),
        )

    def transform(self) -> sitk.Euler3DTransform:
        """The SimpleITK transform (reference points → moving points)."""
        transform = sitk.Euler3DTransform()
        transform.SetCenter(self.center_mm)
        transform.SetParameters(self.parameters)
        return transform

    def inverse(self) -> RigidRegistration:
        """The registration of the reference onto the moving CT (moving → reference points).

        With ``x' = R (x − c) + c + t`` the inverse is ``x = Rᵀ (x' − c') + c' − t``
        with centre ``c' = c + t``.
        """
        rotation = np.asarray(self.transform().GetMatrix()).reshape(3, 3)
        center = np.asarray(self.center_mm) + np.asarray(self.translation_mm)
        inverse = sitk.Euler3DTransform()
        inverse.SetCenter(tuple(float(v) for v in center))
        inverse.SetMatrix(tuple(float(v) for v in rotation.T.ravel()))
        inverse.SetTranslation(tuple(-float(v) for v in self.translation_mm))
        return replace(
            self,
            parameters=tuple(float(p) for p in inverse.GetParameters()),  # type: ignore[arg-type]
            center_mm=tuple(float(v) for v in center),  # type: ignore[arg-type]
        )

    def map_point_mm(self, point_mm: Vector3) -> Vector3:
        """Where the reference point ``point_mm`` lies in moving space."""
        x, y, z = self.transform().TransformPoint(tuple(float(v) for v in point_mm))
        return (x, y, z)

    def quality(self, elapsed_h: float) -> RegistrationQuality:
        """This registration as a :class:`~theranode.dosimetry.results.RegistrationQuality`."""
        return RegistrationQuality(
            elapsed_h=elapsed_h,
            metric=f"{self.metric.value} within the reference body mask",
            value_before=self.metric_before,
            value_after=self.metric_after,
            translation_mm=self.translation_mm,
            rotation_deg=self.rotation_deg,
            converged=self.converged,
        )


# -- image preparation ---------------------------------------------------
def _working_image(ct: Volume, settings: RegistrationSettings) -> sitk.Image:
    """CT as float32, bin-shrunk to ~``working_spacing_mm``, HU clipped."""
    image = ct.to_sitk()
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    factors = [
        max(1, int(settings.working_spacing_mm / s + 1e-6)) for s in ct.spacing_mm
    ]
    if any(f > 1 for f in factors):
        image = sitk.BinShrink(image, factors)
    low, high = settings.intensity_window_hu
    clamped: sitk.Image = sitk.Clamp(image, sitk.sitkFloat32, low, high)
    return clamped


def body_mask(image: sitk.Image, settings: RegistrationSettings) -> sitk.Image:
    """Body of a CT: HU above the threshold, largest component, closed, filled.

    Parameters
    ----------
    image:
        A CT in HU (any pixel type).
    settings:
        Gives the threshold and closing radius.

    Returns
    -------
    SimpleITK.Image
        ``uint8`` mask on the grid of ``image``.
    """
    above = sitk.BinaryThreshold(
        image, lowerThreshold=settings.body_threshold_hu, upperThreshold=1e9
    )
    components = sitk.ConnectedComponent(above)
    largest = sitk.RelabelComponent(components, sortByObjectSize=True) == 1
    radius = [max(1, round(settings.closing_radius_mm / s)) for s in image.GetSpacing()]
    closed = sitk.BinaryMorphologicalClosing(largest, radius)
    filled = sitk.BinaryFillhole(closed)
    if not np.any(sitk.GetArrayViewFromImage(filled)):
        raise RegistrationError(
            f"The reference CT has no voxel above {settings.body_threshold_hu} HU, so no "
            "body mask could be built. Check that the reference image is a CT in HU."
        )
    mask: sitk.Image = sitk.Cast(filled, sitk.sitkUInt8)
    return mask


def _mask_centroid_mm(mask: sitk.Image) -> Vector3:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    x, y, z = stats.GetCentroid(1)
    return (x, y, z)


# -- the registration method ------------------------------------------------
def _set_metric(method: sitk.ImageRegistrationMethod, metric: SimilarityMetric) -> None:
    if metric is SimilarityMetric.MEAN_SQUARES:
        method.SetMetricAsMeanSquares()
    elif metric is SimilarityMetric.CORRELATION:
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)


def _base_method(
    mask: sitk.Image, settings: RegistrationSettings, sampling_percentage: float
) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    _set_metric(method, settings.metric)
    method.SetMetricFixedMask(mask)
    # Gradients at the sampled points only: precomputing gradient images of
    # the whole CT at every level costs more than the sampled metric itself.
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_percentage, settings.random_seed)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _evaluate(
    fixed: sitk.Image,
    moving: sitk.Image,
    mask: sitk.Image,
    transform: sitk.Transform,
    settings: RegistrationSettings,
    shrink: int = 1,
) -> float:
    """Metric value of ``transform`` (optionally on a shrunk level)."""
    if shrink > 1:
        fixed = sitk.Shrink(fixed, [shrink] * 3)
        moving = sitk.Shrink(moving, [shrink] * 3)
        mask = sitk.Resample(mask, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    method = _base_method(mask, settings, settings.sampling_percentage)
    method.SetInitialTransform(transform, inPlace=False)
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:
        return math.inf


def _candidate_initialisations(
    fixed: sitk.Image,
    moving: sitk.Image,
    center_mm: Vector3,
    settings: RegistrationSettings,
) -> dict[InitialAlignment, sitk.Euler3DTransform]:
    identity = sitk.Euler3DTransform()
    identity.SetCenter(center_mm)
    geometry = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            fixed,
            moving,
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.GEOMETRY,
        )
    )
    moving_body = _mask_centroid_mm(body_mask(moving, settings))
    moments = sitk.Euler3DTransform()
    moments.SetCenter(center_mm)
    moments.SetTranslation(
        tuple(m - c for m, c in zip(moving_body, center_mm, strict=True))
    )
    centred = sitk.Euler3DTransform()  # same pure translation, our centre of rotation
    centred.SetCenter(center_mm)
    centred.SetTranslation(geometry.GetTranslation())
    return {
        InitialAlignment.IDENTITY: identity,
        InitialAlignment.GEOMETRY: centred,
        InitialAlignment.MOMENTS: moments,
    }


def _initial_transform(
    fixed: sitk.Image,
    moving: sitk.Image,
    mask: sitk.Image,
    center_mm: Vector3,
    settings: RegistrationSettings,
) -> sitk.Euler3DTransform:
    candidates = _candidate_initialisations(fixed, moving, center_mm, settings)
    if settings.initial_alignment is not InitialAlignment.AUTO:
        return candidates[settings.initial_alignment]
    coarse = max(settings.shrink_factors)
    scores = {
        name: _evaluate(fixed, moving, mask, transform, settings, shrink=coarse)
        for name, transform in candidates.items()
    }
    best = min(scores, key=lambda name: scores[name])
    logger.debug("Initial alignment scores %s; starting from %s", scores, best.value)
    return candidates[best]


def _configure_optimizer(
    method: sitk.ImageRegistrationMethod, settings: RegistrationSettings
) -> None:
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.learning_rate_mm,
        minStep=settings.min_step_mm,
        numberOfIterations=settings.max_iterations,
        relaxationFactor=settings.relaxation_factor,
        gradientMagnitudeTolerance=1e-10,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()


def _with_enough_samples(
    mask: sitk.Image, settings: RegistrationSettings
) -> RegistrationSettings:
    """Bring the expected number of sampled body voxels into [min, max]."""
    n_body = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    if n_body == 0:
        return settings
    expected = settings.sampling_percentage * n_body
    target = min(
        max(expected, settings.min_sampled_voxels), settings.max_sampled_voxels
    )
    fraction = min(1.0, target / n_body)
    logger.debug("Sampling %.4f of the voxels (%d in the body)", fraction, n_body)
    return replace(settings, sampling_percentage=fraction)


def _check_plausible(result: RigidRegistration, settings: RegistrationSettings) -> None:
    shift = float(np.linalg.norm(result.translation_mm))
    angle = max(abs(a) for a in result.rotation_deg)
    if shift > settings.max_translation_mm or angle > settings.max_rotation_deg:
        raise RegistrationError(
            f"Rigid registration gave an implausible motion (translation {shift:.1f} mm, "
            f"rotation {angle:.1f}°; limits {settings.max_translation_mm} mm, "
            f"{settings.max_rotation_deg}°). Check that both CTs show the same patient and "
            "body region, or register with initial_alignment='geometry'."
        )


def register_rigid(
    reference_ct: Volume,
    moving_ct: Volume,
    settings: RegistrationSettings | None = None,
) -> RigidRegistration:
    """Register ``moving_ct`` rigidly onto ``reference_ct``.

    Parameters
    ----------
    reference_ct:
        The fixed image, in HU (the cycle's first CT).
    moving_ct:
        The CT of another time point, in HU.
    settings:
        Registration knobs; defaults when ``None``.

    Returns
    -------
    RigidRegistration
        Transform mapping reference points to moving points, with quality.

    Raises
    ------
    RegistrationError
        When ITK fails (e.g. no overlap) or the result is implausible.

    References
    ----------
    Hebert et al. 2024 (automatic rigid registration on the first CT);
    ITK Software Guide, book 2, §3.6 (v4 registration framework).
    """
    settings = settings or RegistrationSettings()
    fixed = _working_image(reference_ct, settings)
    moving = _working_image(moving_ct, settings)
    mask = body_mask(fixed, settings)
    center_mm = _mask_centroid_mm(mask)
    settings = _with_enough_samples(mask, settings)
    initial = _initial_transform(fixed, moving, mask, center_mm, settings)
    identity = RigidRegistration.identity(center_mm).transform()
    before = _evaluate(fixed, moving, mask, identity, settings)
    method = _base_method(mask, settings, settings.sampling_percentage)
    _configure_optimizer(method, settings)
    method.SetInitialTransform(initial, inPlace=False)
    try:
        final = method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise RegistrationError(
            f"Rigid CT registration failed inside ITK ({str(exc).strip().splitlines()[-1]}). "
            "Check that the two CTs overlap and show the same body region."
        ) from exc
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(final).GetNthTransform(0))
    after = _evaluate(fixed, moving, mask, euler, settings)
    stop = method.GetOptimizerStopConditionDescription()
    converged = "step" in stop.lower() and after <= before + 1e-9 * abs(before)
    result = RigidRegistration(
        parameters=tuple(float(p) for p in euler.GetParameters()),  # type: ignore[arg-type]
        center_mm=tuple(float(c) for c in euler.GetCenter()),  # type: ignore[arg-type]
        metric=settings.metric,
        metric_before=before,
        metric_after=after,
        converged=converged,
        iterations=int(method.GetOptimizerIteration()),
        stop_condition=stop,
    )
    _check_plausible(result, settings)
    logger.info(
        "Rigid registration: translation %s mm, rotation %s deg, metric %.4g -> %.4g, %s",
        np.round(result.translation_mm, 2),
        np.round(result.rotation_deg, 2),
        before,
        after,
        stop,
    )
    return result


# -- resampling through a registration -----------------------------------
def resample_to_reference(
    volume: Volume,
    reference: Volume,
    registration: RigidRegistration | None,
    interpolation: str = "linear",
) -> Volume:
    """Bring ``volume`` (in a moving frame) onto the grid of ``reference``.

    Parameters
    ----------
    volume:
        A volume in the frame of reference of the registered (moving) CT,
        e.g. that time point's SPECT in Bq/mL.
    reference:
        Any volume defining the target grid in the reference CT's frame
        (the reference CT, or the dose grid).
    registration:
        Result of :func:`register_rigid` for the CT sharing ``volume``'s
        frame; ``None`` for the reference time point itself.
    interpolation:
        ``"linear"`` for concentrations and HU, ``"nearest"`` for labels.

    Returns
    -------
    Volume
        Values sampled at the reference grid; 0 outside ``volume``.
    """
    transform = registration.transform() if registration is not None else None
    return resample(volume, reference, transform, interpolation=interpolation)


def crop_mask(mask: Volume, margin: int = 2) -> Volume:
    """The mask on the sub-grid of its bounding box plus ``margin`` voxels.

    Geometry is kept exact (origin moved to the first kept voxel), so the
    cropped mask resamples, measures and propagates like the full one. Organs
    fill a small part of a clinical CT: cropping keeps VOI memory and
    resampling cost proportional to the organ, not to the 512×512×N grid.
    """
    array = np.asarray(mask.array, dtype=bool)
    nonzero = np.nonzero(array)
    if nonzero[0].size == 0:
        return mask.with_array(array, unit="mask")
    lo = [max(0, int(ax.min()) - margin) for ax in nonzero]
    hi = [
        min(n, int(ax.max()) + margin + 1)
        for ax, n in zip(nonzero, array.shape, strict=True)
    ]
    origin = mask.index_to_patient(np.array([lo[2], lo[1], lo[0]], dtype=float))
    return Volume(
        array=np.ascontiguousarray(array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]),
        spacing_mm=mask.spacing_mm,
        origin_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction=mask.direction,
        unit="mask",
    )


def resample_mask(
    mask: Volume,
    reference: Volume,
    registration: RigidRegistration | None = None,
    threshold: float = 0.5,
) -> Volume:
    """Resample a binary mask by linear interpolation of its occupancy, then threshold.

    Linear interpolation of the 0/1 mask gives each target voxel centre the
    occupied fraction of its neighbourhood; keeping voxels ≥ ``threshold``
    (0.5) preserves the volume of smooth shapes better than nearest neighbour
    when the target grid is coarser (CT → SPECT grid).

    Raises
    ------
    GeometryError
        When the mask is empty on the target grid.
    """
    cropped = crop_mask(mask)
    occupancy = cropped.with_array(cropped.array.astype(np.float32), unit="fraction")
    fraction = resample_to_reference(occupancy, reference, registration, "linear")
    result = fraction.with_array(fraction.array >= threshold, unit="mask")
    if not result.array.any():
        raise GeometryError(
            f"A mask of {int(np.count_nonzero(mask.array))} voxels has no voxel left on the "
            f"target grid (shape {reference.shape}, spacing {reference.spacing_mm} mm). "
            "Check that the VOI lies inside the field of view of the target image."
        )
    return result
