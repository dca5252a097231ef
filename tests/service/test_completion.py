"""Completion rules: pure decisions from the grouped series, the protocol and the clock."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from theranode.dicomio.headers import SeriesKind
from theranode.service.plan.completion import (
    Action,
    CycleView,
    Protocol,
    Reference,
    ReferenceState,
    SeriesView,
    decide,
    input_fingerprint,
)

INJECTION = datetime(2024, 3, 4, 9, 0)
LAST = datetime(2024, 3, 12, 10, 0)
PROTOCOL = Protocol(
    multi_time_point_cycles=frozenset({1, 2}),
    multi_time_points_h=(4.0, 24.0, 72.0, 192.0),
    single_time_point_h=24.0,
    min_time_points=3,
    quiet_period=timedelta(seconds=30),
    forced_timeout=timedelta(hours=144),
)


def series(nominal: float, role: SeriesKind, uid: str = "", frame: str = "",
           received: datetime = LAST) -> SeriesView:
    return SeriesView(uid or f"{role.value}-{nominal:g}", role, nominal, nominal + 0.3,
                      frame or f"frame-{nominal:g}", received)


def cycle(hours: tuple[float, ...], number: int = 1, rtstruct_at: float | None = 4.0,
          ) -> CycleView:
    members = [s for h in hours for s in (series(h, SeriesKind.SPECT), series(h, SeriesKind.CT))]
    if rtstruct_at is not None:
        members.append(series(rtstruct_at, SeriesKind.RTSTRUCT))
    return CycleView("patient", 1, number, INJECTION, tuple(members))


QUIET = LAST + timedelta(minutes=1)
FORCED = LAST + timedelta(hours=145)


def test_complete_quiet_cycle_runs_with_every_time_point() -> None:
    decision = decide(cycle((4, 24, 72, 192)), PROTOCOL, QUIET)
    assert decision.action is Action.RUN and decision.multi_time_point
    assert [tp.nominal_h for tp in decision.time_points] == [4, 24, 72, 192]
    assert decision.rtstruct_uid == "RTSTRUCT-4"
    assert set(decision.series_uids) >= {"SPECT-192", "CT-192", "RTSTRUCT-4"}


def test_nothing_runs_during_the_quiet_period() -> None:
    decision = decide(cycle((4, 24, 72, 192)), PROTOCOL, LAST + timedelta(seconds=10))
    assert decision.action is Action.WAIT and "quiet period" in decision.reason


def test_missing_time_point_waits_until_the_forced_timeout() -> None:
    decision = decide(cycle((4, 24, 72)), PROTOCOL, QUIET)
    assert decision.action is Action.WAIT and "192 h" in decision.reason


def test_forced_timeout_runs_with_enough_time_points() -> None:
    decision = decide(cycle((4, 24, 72)), PROTOCOL, FORCED)
    assert decision.action is Action.RUN
    assert "forced timeout" in decision.reason and "192 h" in decision.reason
    assert [tp.nominal_h for tp in decision.time_points] == [4, 24, 72]


def test_forced_timeout_with_too_few_time_points_is_incomplete() -> None:
    strict = Protocol(**{**PROTOCOL.__dict__, "min_time_points": 4})
    decision = decide(cycle((4, 24, 72)), strict, FORCED)
    assert decision.action is Action.INCOMPLETE
    assert "192 h" in decision.reason and "at least 4" in decision.reason


def test_a_time_point_needs_its_ct() -> None:
    view = cycle((4, 24, 72, 192))
    view = CycleView(view.patient_key, 1, 1, INJECTION,
                     tuple(s for s in view.series if s.series_uid != "CT-72"))
    decision = decide(view, PROTOCOL, QUIET)
    assert decision.action is Action.WAIT and "72 h" in decision.reason


def test_rtstruct_must_be_on_the_first_ct() -> None:
    assert decide(cycle((4, 24, 72, 192), rtstruct_at=None), PROTOCOL, QUIET).action is Action.WAIT
    late = decide(cycle((4, 24, 72, 192), rtstruct_at=24.0), PROTOCOL, QUIET)
    assert late.action is Action.WAIT and "first (4 h) CT" in late.reason
    forced = decide(cycle((4, 24, 72, 192), rtstruct_at=None), PROTOCOL, FORCED)
    assert forced.action is Action.INCOMPLETE and "RTSTRUCT" in forced.reason


def test_ct_in_the_spect_frame_of_reference_is_preferred() -> None:
    base = cycle((4, 24, 72, 192))
    other_ct = series(24, SeriesKind.CT, uid="CT-24-other", frame="elsewhere",
                      received=LAST + timedelta(seconds=5))
    view = CycleView("patient", 1, 1, INJECTION, (*base.series, other_ct))
    decision = decide(view, PROTOCOL, QUIET)
    assert decision.time_points[1].ct_uid == "CT-24"


@pytest.mark.parametrize(
    ("reference", "action", "words"),
    [
        (
            Reference(ReferenceState.READY, 2, "results/job-7", "fp"),
            Action.RUN,
            "scaled from cycle 2",
        ),
        (Reference(ReferenceState.PENDING, 2), Action.WAIT, "waiting for the result"),
        (Reference(ReferenceState.NONE), Action.RUN, "fallback"),
    ],
)
def test_single_time_point_cycle_scales_from_the_multi_time_point_cycle(
    reference: Reference, action: Action, words: str
) -> None:
    decision = decide(cycle((24,), number=3, rtstruct_at=24.0), PROTOCOL, QUIET, reference)
    assert decision.action is action and words in decision.reason
    assert not decision.multi_time_point
    if action is Action.RUN:
        assert [tp.nominal_h for tp in decision.time_points] == [24]
        expected = reference.result_dir if reference.state is ReferenceState.READY else None
        assert decision.reference.result_dir == expected


def test_single_time_point_cycle_stops_waiting_for_a_reference_at_the_timeout() -> None:
    pending = Reference(ReferenceState.PENDING, 2)
    decision = decide(cycle((24,), number=3, rtstruct_at=24.0), PROTOCOL, FORCED, pending)
    assert decision.action is Action.RUN and "fallback" in decision.reason


def test_single_time_point_cycle_without_its_scan_is_incomplete_at_the_timeout() -> None:
    view = CycleView("patient", 1, 3, INJECTION, ())
    view = CycleView("patient", 1, 3, INJECTION, (series(4, SeriesKind.RTSTRUCT),))
    assert decide(view, PROTOCOL, QUIET).action is Action.WAIT
    assert decide(view, PROTOCOL, FORCED).action is Action.INCOMPLETE


def test_fingerprint_depends_on_inputs_settings_and_extra_not_on_order() -> None:
    pairs = [("1.2.3", "aa"), ("1.2.4", "bb")]
    base = input_fingerprint(pairs, "settings")
    assert input_fingerprint(reversed(pairs), "settings") == base
    assert input_fingerprint([("1.2.3", "aa"), ("1.2.4", "bc")], "settings") != base
    assert input_fingerprint(pairs, "other settings") != base
    assert input_fingerprint(pairs, "settings", ["generation 1"]) != base
    assert input_fingerprint([*pairs, ("1.2.5", "cc")], "settings") != base
