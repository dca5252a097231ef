"""Result records ⇄ JSON: every record type round-trips exactly; foreign documents are refused."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dicomio.result_records import course_result, cycle_result
from tests.dosimetry.records_strategies import RECORDS, assert_identical
from theranode.dosimetry.records_json import (
    RESULT_TYPES,
    RecordFormatError,
    check_format,
    record_from_json,
    record_to_json,
)
from theranode.dosimetry.results import CycleResult, MapVoi, VoiDose

EXAMPLES = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def round_trip(value: Any, cls: type) -> tuple[Any, dict[str, np.ndarray]]:
    """Encode, through strict JSON text (no NaN), and decode again."""
    arrays: dict[str, np.ndarray] = {}

    def store(key: str, array: np.ndarray) -> None:
        assert key not in arrays
        arrays[key] = array.copy()

    text = json.dumps(record_to_json(value, cls, "result", store), allow_nan=False)
    decoded = record_from_json(json.loads(text), cls, "result",
                               lambda key, dtype, shape: arrays[key])
    return decoded, arrays


def test_every_stored_type_has_a_strategy() -> None:
    assert set(RECORDS) == set(RESULT_TYPES)


@pytest.mark.parametrize("cls", list(RECORDS), ids=lambda c: c.__name__)
@EXAMPLES
@given(data=st.data())
def test_every_record_type_round_trips_exactly(cls: type, data: st.DataObject) -> None:
    value = data.draw(RECORDS[cls])
    decoded, _ = round_trip(value, cls)
    assert_identical(decoded, value)


def test_hand_built_results_round_trip_exactly() -> None:
    for value in (cycle_result(), course_result()):
        decoded, arrays = round_trip(value, type(value))
        assert_identical(decoded, value)
        assert arrays  # the dose maps went to the array store, not into the JSON


def test_voi_masks_are_stored_as_packed_bits() -> None:
    mask = np.zeros((3, 5, 7), dtype=bool)
    mask[1, 2:4, 3:6] = True
    decoded, arrays = round_trip(MapVoi("liver", mask, float("nan")), MapVoi)
    (stored,) = arrays.values()
    assert stored.dtype == np.uint8 and stored.size == (mask.size + 7) // 8
    assert_identical(decoded, MapVoi("liver", mask, float("nan")))


def encoded(value: Any, cls: type) -> Any:
    return record_to_json(value, cls, "result", lambda key, array: None)


def test_unknown_enum_values_missing_and_extra_fields_are_refused() -> None:
    voi = cycle_result().vois[0]
    doc = encoded(voi, VoiDose)
    no_load = lambda key, dtype, shape: pytest.fail("no arrays expected")  # noqa: E731
    with pytest.raises(RecordFormatError, match="not a VoiKind"):
        record_from_json({**doc, "kind": "brain"}, VoiDose, "voi", no_load)
    with pytest.raises(RecordFormatError, match=r"missing \['mean_gy'\]"):
        record_from_json({k: v for k, v in doc.items() if k != "mean_gy"}, VoiDose, "voi",
                         no_load)
    with pytest.raises(RecordFormatError, match=r"unknown \['__class__'\]"):
        record_from_json({**doc, "__class__": "os.system"}, VoiDose, "voi", no_load)
    with pytest.raises(RecordFormatError, match="expected a number"):
        record_from_json({**doc, "mean_gy": "1.0"}, VoiDose, "voi", no_load)


def test_an_array_reference_cannot_name_a_path() -> None:
    doc = encoded(cycle_result(), CycleResult)
    doc["dose_map"]["array"]["$array"] = "../../../etc/passwd"
    with pytest.raises(RecordFormatError, match="not a stored array"):
        record_from_json(doc, CycleResult, "result", lambda key, dtype, shape: None)


def test_object_arrays_are_neither_written_nor_read() -> None:
    voi = dataclasses.replace(MapVoi("x", np.zeros((1, 1, 1), bool), 1.0),
                              mask=np.array([[[object()]]], dtype=object))
    with pytest.raises(RecordFormatError, match="dtype object"):
        encoded(voi, MapVoi)
    doc = encoded(MapVoi("x", np.zeros((1, 1, 2)), 1.0), MapVoi)
    doc["mask"]["dtype"] = "|O"
    with pytest.raises(RecordFormatError, match="dtype object"):
        record_from_json(doc, MapVoi, "voi", lambda key, dtype, shape: None)


@pytest.mark.parametrize("version, message", [
    (3, "format version 3 is newer than this theranode understands (1); upgrade theranode"),
    (0, "format version 0 is not one this theranode reads (1)"),
    ("1", "format version '1' is not one this theranode reads (1)"),
])
def test_versions_other_than_the_one_understood_are_refused(version: Any, message: str) -> None:
    with pytest.raises(RecordFormatError) as refused:
        check_format({"format": "theranode-result", "version": version}, "result.json",
                     "theranode-result", 1)
    assert str(refused.value).startswith(f"result.json {message}")


def test_a_document_of_another_format_is_refused() -> None:
    with pytest.raises(RecordFormatError, match="is not a theranode-result document"):
        check_format({"format": "pickle", "version": 1}, "result.json", "theranode-result", 1)
