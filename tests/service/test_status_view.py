"""`theranode status` names what a cycle lacks by the configured protocol."""

from __future__ import annotations

from theranode.config.schema import settings_from_dict
from theranode.service.cli.status_view import CycleStatus, TimePointStatus
from theranode.service.plan.planner import protocol_from_settings

SERIES = [{"series_uid": "1.2.3"}]


def cycle(number: int, *hours: float, structures: bool = True) -> CycleStatus:
    status = CycleStatus(1, number, "2024-01-01T10:00:00", "header")
    for h in hours:
        status.time_points[h] = TimePointStatus(h, spect=SERIES, ct=SERIES,
                                                structures=SERIES if structures else [])
    return status


def test_a_multi_time_point_cycle_lacks_the_protocol_time_points_not_yet_received():
    protocol = protocol_from_settings(settings_from_dict({}, "test"))
    assert cycle(1, 4.0, 24.0).missing(protocol) == [
        "72 h SPECT", "72 h CT", "192 h SPECT", "192 h CT"]
    assert cycle(2, 4.0, 24.0, 72.0, 192.0).missing(protocol) == []


def test_a_single_time_point_cycle_needs_only_its_scan_and_a_structure_set():
    protocol = protocol_from_settings(settings_from_dict({}, "test"))
    assert cycle(3, 24.0).missing(protocol) == []
    assert cycle(4, 24.0, structures=False).missing(protocol) == ["RTSTRUCT"]
    assert cycle(3).missing(protocol) == ["24 h SPECT", "24 h CT", "RTSTRUCT"]


def test_the_protocol_of_the_configuration_decides_not_a_guess_from_what_arrived():
    protocol = protocol_from_settings(settings_from_dict({"protocol": {
        "multi_time_point_cycles": [1, 2, 3], "min_time_points": 2}}, "test"))
    assert cycle(3, 24.0).missing(protocol) == [
        "4 h SPECT", "4 h CT", "72 h SPECT", "72 h CT", "192 h SPECT", "192 h CT"]
