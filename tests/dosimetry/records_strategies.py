"""Hypothesis strategies for every stored record type, and an exact comparison.

Floats include NaN, ±inf and −0.0; arrays are bool, integer and float of
small 3-D shapes; free-form fields (a result's settings, a volume's
metadata) nest lists, tuples and dicts.
"""

from __future__ import annotations

import math
import struct
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from theranode.dosimetry.results import (
    CourseResult,
    CumulativeDose,
    CurvePoint,
    CycleResult,
    DoseMethod,
    DoseUncertainty,
    KineticFit,
    KineticModel,
    LesionIndices,
    MapVoi,
    Organ,
    RegistrationQuality,
    UncertaintyComponent,
    VoiDose,
    VoiKind,
)
from theranode.dosimetry.volume import Volume

floats = st.floats(allow_nan=True, allow_infinity=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
text = st.text(max_size=12)
small_tuple = lambda s: st.lists(s, max_size=3).map(tuple)  # noqa: E731
shapes = hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=4)
free_values = st.recursive(
    st.none() | st.booleans() | st.integers() | floats | text,
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
free_dicts = st.dictionaries(text, free_values, max_size=4)


def arrays(dtype: Any) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(dtype, shapes)


volumes = st.builds(
    Volume,
    array=st.sampled_from([np.float32, np.float64, np.int16, np.uint8, np.bool_]).flatmap(arrays),
    spacing_mm=st.tuples(*[st.floats(0.01, 100)] * 3),
    origin_mm=st.tuples(*[finite] * 3),
    direction=st.tuples(*[finite] * 9),
    unit=text,
    metadata=free_dicts,
)
map_vois = st.builds(MapVoi, name=text, mask=arrays(np.bool_), factor=floats)
fits = st.builds(
    KineticFit, model=st.sampled_from(KineticModel), parameters=st.dictionaries(text, floats),
    integral=floats, integral_sd=floats, effective_half_life_h=st.none() | floats,
    aicc=st.none() | floats, uptake_model=text, notes=small_tuple(text),
)
curve_points = st.builds(CurvePoint, floats, floats, floats, floats)
registrations = st.builds(
    RegistrationQuality, floats, text, floats, floats, st.tuples(floats, floats, floats),
    st.tuples(floats, floats, floats), st.booleans(),
)
relative = st.floats(0.0, 10.0)
uncertainties = st.builds(
    DoseUncertainty, dose_gy=st.floats(0.0, 1e6),
    components=st.dictionaries(st.sampled_from(UncertaintyComponent), relative, max_size=4),
)
voi_doses = st.builds(
    VoiDose, name=text, kind=st.sampled_from(VoiKind), method=st.sampled_from(DoseMethod),
    volume_ml=floats, mean_gy=floats, mean_gy_sd=floats, min_gy=st.none() | floats,
    max_gy=st.none() | floats, d98_gy=st.none() | floats, d2_gy=st.none() | floats,
    organ=st.none() | st.sampled_from(Organ),
    time_integrated_activity_mbq_h=st.none() | floats,
    effective_half_life_h=st.none() | floats, fit=st.none() | fits,
    curve=small_tuple(curve_points), recovery_coefficient=floats,
    partial_volume_factor=floats, excluded=st.booleans(),
    exclusion_reason=st.none() | text, notes=small_tuple(text),
    uncertainty=st.none() | uncertainties,
)
cycle_results = st.builds(
    CycleResult, cycle_number=st.integers(1, 8), method=st.sampled_from(DoseMethod),
    administered_activity_mbq=st.none() | floats, time_points_h=small_tuple(floats),
    vois=small_tuple(voi_doses), dose_map=st.none() | volumes,
    registration=small_tuple(registrations), warnings=small_tuple(text),
    settings=free_dicts, map_vois=small_tuple(map_vois),
)
cumulative_doses = st.builds(
    CumulativeDose, name=text, kind=st.sampled_from(VoiKind), total_gy=floats,
    total_gy_sd=floats, per_cycle_gy=st.dictionaries(st.integers(1, 8), floats),
    organ=st.none() | st.sampled_from(Organ), excluded=st.booleans(),
    uncertainty=st.none() | uncertainties,
)
lesion_indices = st.builds(
    LesionIndices, st.integers(0, 50), floats, floats, floats,
    mean_uncertainty=st.none() | uncertainties, min_uncertainty=st.none() | uncertainties,
    max_uncertainty=st.none() | uncertainties,
)
course_results = st.builds(
    CourseResult, cycles=st.lists(cycle_results, max_size=2).map(tuple),
    cumulative=small_tuple(cumulative_doses), lesion_indices=st.none() | lesion_indices,
    flags=small_tuple(text), projected_total_gy=st.dictionaries(text, floats),
    planned_cycles=st.integers(1, 8), course_map=st.none() | volumes,
    course_map_method=text, course_map_comment=text, course_map_notes=small_tuple(text),
)

#: One strategy per stored record type.
RECORDS: dict[type, st.SearchStrategy[Any]] = {
    Volume: volumes, MapVoi: map_vois, KineticFit: fits, CurvePoint: curve_points,
    RegistrationQuality: registrations, VoiDose: voi_doses, CycleResult: cycle_results,
    CumulativeDose: cumulative_doses, LesionIndices: lesion_indices,
    CourseResult: course_results, DoseUncertainty: uncertainties,
}


def assert_identical(found: Any, expected: Any, where: str = "value") -> None:
    """Equal in type and value: arrays bit for bit, floats bit for bit (NaN, −0.0)."""
    assert type(found) is type(expected), f"{where}: {type(found)} != {type(expected)}"
    if isinstance(expected, np.ndarray):
        assert found.dtype == expected.dtype and found.shape == expected.shape, where
        assert found.tobytes() == expected.tobytes(), f"{where}: array bytes differ"
    elif is_dataclass(expected):
        for f in fields(expected):
            assert_identical(getattr(found, f.name), getattr(expected, f.name),
                             f"{where}.{f.name}")
    elif isinstance(expected, tuple | list):
        assert len(found) == len(expected), where
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            assert_identical(a, b, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert list(found) == list(expected), f"{where}: keys differ"
        for key in expected:
            assert_identical(found[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, float):
        assert struct.pack("<d", found) == struct.pack("<d", expected) or (
            math.isnan(found) and math.isnan(expected)), f"{where}: {found} != {expected}"
    else:
        assert found == expected, f"{where}: {found!r} != {expected!r}"
