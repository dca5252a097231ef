"""Grouping: patient → course → cycle → time point, from header facts alone."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from theranode.config.schema import GroupingSettings
from theranode.dicomio.headers import SeriesKind
from theranode.service.plan.grouping import SeriesFacts, State, group_patient
from theranode.service.plan.regroup import rules_from_settings

RULES = rules_from_settings(GroupingSettings())
CYCLE1 = datetime(2024, 3, 4, 10, 30)
CYCLE2 = CYCLE1 + timedelta(weeks=8)


def spect(uid: str, injection: datetime | None, hours: float, *, frame: str = "",
          time_only: bool = False, event: str | None = None,
          nuclide: str | None = "Lu-177", study: str = "") -> SeriesFacts:
    base = injection or CYCLE1
    return SeriesFacts(
        series_uid=uid, role=SeriesKind.SPECT, study_uid=study or f"study-{uid}",
        frame_of_reference_uid=frame or f"for-{uid}",
        acquired=base + timedelta(hours=hours),
        injection_start=None if time_only or injection is None else injection,
        injection_time=injection.time() if injection else None,
        injection_event_uid=event, radionuclide=nuclide,
    )


def by_uid(placements):
    return {p.series_uid: p for p in placements}


def test_two_cycles_of_four_time_points_are_binned_by_hours_after_injection():
    series = [spect(f"c1-{h}", CYCLE1, h + 0.7) for h in (4, 24, 72, 192)]
    series += [spect(f"c2-{h}", CYCLE2, h - 1.5) for h in (4, 24, 72, 192)]
    placed = by_uid(group_patient(series, RULES))
    assert {p.cycle for p in placed.values()} == {1, 2}
    assert {p.course for p in placed.values()} == {1}
    assert placed["c1-72"].time_point_h == 72 and placed["c1-72"].cycle == 1
    assert placed["c2-4"].time_point_h == 4 and placed["c2-4"].cycle == 2
    assert placed["c2-192"].elapsed_h == pytest.approx(190.5)


def test_injection_times_within_tolerance_are_one_administration():
    series = [spect("a", CYCLE1, 4), spect("b", CYCLE1 + timedelta(minutes=10), 24)]
    placed = by_uid(group_patient(series, RULES))
    assert placed["a"].cycle == placed["b"].cycle == 1


def test_time_only_injection_joins_the_known_administration_of_that_time():
    series = [spect("full", CYCLE1, 4), spect("late", CYCLE1, 192, time_only=True)]
    placed = by_uid(group_patient(series, RULES))
    assert placed["late"].cycle == 1
    assert placed["late"].time_point_h == 192
    assert placed["late"].injection == CYCLE1


def test_time_only_cycle_is_dated_by_its_earliest_scan():
    series = [spect(f"t{h}", CYCLE1, h, time_only=True) for h in (4, 24, 72, 192)]
    placed = by_uid(group_patient(series, RULES))
    assert {p.injection for p in placed.values()} == {CYCLE1}
    assert [placed[f"t{h}"].time_point_h for h in (4, 24, 72, 192)] == [4, 24, 72, 192]
    assert "earliest scan" in placed["t72"].injection_source


def test_time_only_injection_later_in_the_day_than_first_scan_is_the_day_before():
    injection = datetime(2024, 3, 4, 22, 0)
    placed = by_uid(group_patient([spect("x", injection, 20, time_only=True)], RULES))
    assert placed["x"].injection == injection
    assert placed["x"].time_point_h == 24


def test_event_uid_links_a_series_without_date_to_its_administration():
    series = [spect("a", CYCLE1, 4, event="1.2.3"),
              SeriesFacts("b", SeriesKind.SPECT, "s", "f", acquired=CYCLE1 + timedelta(hours=25),
                          injection_event_uid="1.2.3", radionuclide="Lu-177")]
    placed = by_uid(group_patient(series, RULES))
    assert placed["b"].cycle == 1 and placed["b"].time_point_h == 24


def test_long_gap_starts_a_new_course():
    later = CYCLE1 + timedelta(days=400)
    placed = by_uid(group_patient([spect("a", CYCLE1, 24), spect("b", later, 24)], RULES))
    assert (placed["a"].course, placed["a"].cycle) == (1, 1)
    assert (placed["b"].course, placed["b"].cycle) == (2, 1)


def test_ct_follows_the_spect_of_its_frame_of_reference_and_rtstruct_its_ct():
    series = [
        spect("nm4", CYCLE1, 4, frame="F4"), spect("nm24", CYCLE1, 24, frame="F24"),
        SeriesFacts("ct4", SeriesKind.CT, "s4", "F4", acquired=CYCLE1 + timedelta(hours=4)),
        SeriesFacts("rs", SeriesKind.RTSTRUCT, "s9", None, referenced_frames=("F4",)),
    ]
    placed = by_uid(group_patient(series, RULES))
    assert placed["ct4"].time_point_h == 4 and placed["ct4"].state is State.GROUPED
    assert placed["rs"].cycle == 1 and placed["rs"].time_point_h == 4


def test_rtstruct_is_held_until_its_frame_of_reference_arrives():
    rs = SeriesFacts("rs", SeriesKind.RTSTRUCT, "s9", None, referenced_frames=("F4",))
    held = by_uid(group_patient([spect("nm4", CYCLE1, 4, frame="F4"), rs], RULES))["rs"]
    assert held.state is State.HELD and "F4" in held.note
    ct = SeriesFacts("ct4", SeriesKind.CT, "s4", "F4", acquired=CYCLE1 + timedelta(hours=4))
    placed = by_uid(group_patient([spect("nm4", CYCLE1, 4, frame="F4"), rs, ct], RULES))
    assert placed["rs"].state is State.GROUPED


def test_spect_without_injection_is_ungrouped_with_a_reason():
    placed = by_uid(group_patient([spect("x", None, 4)], RULES))
    assert placed["x"].state is State.UNGROUPED
    assert "injection" in placed["x"].note


def test_scan_outside_every_window_is_ungrouped():
    placed = by_uid(group_patient([spect("x", CYCLE1, 500)], RULES))
    assert placed["x"].state is State.UNGROUPED and "500.0 h" in placed["x"].note


def test_other_radionuclide_is_placed_but_ignored_with_its_ct():
    ct = SeriesFacts("ct", SeriesKind.CT, "s", "for-x", acquired=CYCLE1 + timedelta(hours=24))
    placed = by_uid(group_patient([spect("x", CYCLE1, 24, nuclide="Ga-68"), ct], RULES))
    assert placed["x"].state is State.IGNORED and "Ga-68" in placed["x"].note
    assert placed["ct"].state is State.IGNORED and "Ga-68" in placed["ct"].note


def test_grouping_does_not_depend_on_arrival_order():
    series = [spect(f"c1-{h}", CYCLE1, h, time_only=h > 24) for h in (4, 24, 72, 192)]
    forward = by_uid(group_patient(series, RULES))
    backward = by_uid(group_patient(list(reversed(series)), RULES))
    assert forward == backward


def test_time_of_day_match_wraps_around_midnight():
    injection = datetime(2024, 3, 4, 23, 50)
    series = [spect("a", injection, 4), spect("b", injection + timedelta(minutes=20), 24,
                                            time_only=True)]
    placed = by_uid(group_patient(series, RULES))
    assert placed["b"].cycle == 1
    assert placed["b"].injection == injection
