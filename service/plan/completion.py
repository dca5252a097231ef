"""When is a cycle ready to compute? Pure completion rules from the protocol.

:func:`decide` looks at one cycle as grouped (its series per time point and
when each last received an instance), the protocol and the clock, and answers

* ``RUN`` with the series to use,
* ``WAIT`` with what it waits for, or
* ``INCOMPLETE`` with why it cannot be computed.

Rules
-----
1. Nothing happens until the cycle has been *quiet*: no new instance in any
   of its series for ``quiet_period``.
2. A time point is usable when it has a SPECT and a CT (the CT in the SPECT's
   frame of reference when there is one). Every cycle needs an RTSTRUCT on
   the CT of its first usable time point: VOIs are drawn on the reference CT
   and carried to the others (Hebert 2024).
3. A multi-time-point cycle (its number is in ``multi_time_point_cycles``)
   runs as soon as every expected time point and the RTSTRUCT are present.
   Otherwise it waits until ``forced_timeout`` after its last instance, then
   runs with what it has if it has at least ``min_time_points``, else it is
   incomplete.
4. A single-time-point cycle runs when its scan (``single_time_point_h``) and
   the RTSTRUCT are present. It is scaled from the course's multi-time-point
   cycle when that cycle has a result; while that result is still being
   produced it waits (until the forced timeout); without one it uses the
   configured fallback method, which the report names.
5. New data for a computed cycle changes its input fingerprint
   (:func:`input_fingerprint`), which makes a new result version.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from theranode.dicomio.headers import SeriesKind


class Action(str, enum.Enum):
    WAIT = "wait"
    RUN = "run"
    INCOMPLETE = "incomplete"


class ReferenceState(str, enum.Enum):
    """Whether a single-time-point cycle has a multi-time-point result to scale from."""

    READY = "ready"
    PENDING = "pending"
    NONE = "none"


@dataclass(frozen=True)
class Reference:
    state: ReferenceState
    cycle_number: int | None = None
    result_dir: str | None = None
    fingerprint: str = ""


NO_REFERENCE = Reference(ReferenceState.NONE)


@dataclass(frozen=True)
class Protocol:
    """The completion part of the ``[protocol]`` settings, durations as timedeltas.

    Built from the settings by :func:`theranode.service.plan.planner.protocol_from_settings`
    only.
    """

    multi_time_point_cycles: frozenset[int]
    multi_time_points_h: tuple[float, ...]
    single_time_point_h: float
    min_time_points: int
    quiet_period: timedelta
    forced_timeout: timedelta

    def is_multi_time_point(self, cycle: int) -> bool:
        """Whether cycle number ``cycle`` (within its course) is imaged at several time points."""
        return cycle in self.multi_time_point_cycles

    def expected_time_points(self, cycle: int) -> tuple[float, ...]:
        """The nominal time points (h) the protocol images cycle number ``cycle`` at."""
        if self.is_multi_time_point(cycle):
            return self.multi_time_points_h
        return (self.single_time_point_h,)


@dataclass(frozen=True)
class SeriesView:
    """One grouped series of a cycle."""

    series_uid: str
    role: SeriesKind  # SPECT, CT or RTSTRUCT
    time_point_h: float
    elapsed_h: float | None
    frame_of_reference_uid: str | None
    last_received: datetime


@dataclass(frozen=True)
class CycleView:
    """A cycle as grouped: identity and series."""

    patient_key: str
    course: int
    cycle: int
    injection: datetime
    series: tuple[SeriesView, ...]

    @property
    def last_received(self) -> datetime:
        return max(s.last_received for s in self.series)


@dataclass(frozen=True)
class ChosenTimePoint:
    nominal_h: float
    elapsed_h: float
    spect_uid: str
    ct_uid: str


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    multi_time_point: bool
    time_points: tuple[ChosenTimePoint, ...] = ()
    rtstruct_uid: str | None = None
    reference: Reference = NO_REFERENCE

    @property
    def series_uids(self) -> tuple[str, ...]:
        uids = [u for tp in self.time_points for u in (tp.spect_uid, tp.ct_uid)]
        return (*uids, self.rtstruct_uid) if self.rtstruct_uid else tuple(uids)


# -- time points ------------------------------------------------------------------
def _latest(series: Iterable[SeriesView]) -> SeriesView | None:
    return max(series, key=lambda s: (s.last_received, s.series_uid), default=None)


def usable_time_points(cycle: CycleView) -> dict[float, ChosenTimePoint]:
    """Per nominal time point, the latest SPECT and its CT (same frame of reference first)."""
    chosen: dict[float, ChosenTimePoint] = {}
    for nominal in sorted({s.time_point_h for s in cycle.series}):
        here = [s for s in cycle.series if s.time_point_h == nominal]
        spect = _latest(s for s in here if s.role is SeriesKind.SPECT)
        cts = [s for s in here if s.role is SeriesKind.CT]
        if spect is None or not cts:
            continue
        same_frame = [c for c in cts if c.frame_of_reference_uid == spect.frame_of_reference_uid]
        ct = _latest(same_frame or cts)
        assert ct is not None
        elapsed = spect.elapsed_h if spect.elapsed_h is not None else nominal
        chosen[nominal] = ChosenTimePoint(nominal, elapsed, spect.series_uid, ct.series_uid)
    return chosen


def structure_set_on(cycle: CycleView, tp: ChosenTimePoint) -> SeriesView | None:
    """The latest RTSTRUCT grouped with the CT of ``tp`` (its time point)."""
    return _latest(
        s for s in cycle.series if s.role is SeriesKind.RTSTRUCT and s.time_point_h == tp.nominal_h
    )


def _hours(values: Iterable[float]) -> str:
    return ", ".join(f"{v:g} h" for v in values)


# -- the decision -------------------------------------------------------------------
def decide(
    cycle: CycleView, protocol: Protocol, now: datetime, reference: Reference = NO_REFERENCE
) -> Decision:
    """What to do with ``cycle`` now (module docstring for the rules)."""
    multi = protocol.is_multi_time_point(cycle.cycle)
    quiet_for = now - cycle.last_received
    if quiet_for < protocol.quiet_period:
        return Decision(
            Action.WAIT,
            f"receiving: last instance {quiet_for.total_seconds():.0f} s ago (quiet period "
            f"{protocol.quiet_period.total_seconds():g} s)",
            multi,
        )
    forced = quiet_for >= protocol.forced_timeout
    usable = usable_time_points(cycle)
    if multi:
        return _decide_multi(cycle, protocol, usable, forced)
    return _decide_single(cycle, protocol, usable, forced, reference)


def _run(
    cycle: CycleView, chosen: Sequence[ChosenTimePoint], multi: bool, reason: str,
    reference: Reference = NO_REFERENCE,
) -> Decision:
    rtstruct = structure_set_on(cycle, chosen[0])
    if rtstruct is None:
        return Decision(
            Action.WAIT,
            f"no RTSTRUCT on the first ({chosen[0].nominal_h:g} h) CT: VOIs must be drawn on "
            "the cycle's reference CT",
            multi,
        )
    return Decision(Action.RUN, reason, multi, tuple(chosen), rtstruct.series_uid, reference)


def _decide_multi(
    cycle: CycleView, protocol: Protocol, usable: dict[float, ChosenTimePoint], forced: bool
) -> Decision:
    expected = protocol.multi_time_points_h
    present = [usable[h] for h in expected if h in usable]
    missing = [h for h in expected if h not in usable]
    if not missing:
        decision = _run(cycle, present, True, "all time points present")
        if decision.action is Action.RUN or not forced:
            return decision
        return Decision(Action.INCOMPLETE, decision.reason, True)
    waiting = f"missing SPECT/CT at {_hours(missing)}"
    if not forced:
        return Decision(
            Action.WAIT,
            f"{waiting}; waits until {protocol.forced_timeout.total_seconds() / 3600:g} h "
            "after the last instance",
            True,
        )
    if len(present) < protocol.min_time_points:
        return Decision(
            Action.INCOMPLETE,
            f"{waiting} after the forced timeout; {len(present)} time point(s) present, "
            f"at least {protocol.min_time_points} needed",
            True,
        )
    decision = _run(
        cycle, present, True, f"forced timeout: computed without {_hours(missing)}"
    )
    if decision.action is Action.RUN:
        return decision
    return Decision(Action.INCOMPLETE, decision.reason, True)


def _decide_single(
    cycle: CycleView, protocol: Protocol, usable: dict[float, ChosenTimePoint], forced: bool,
    reference: Reference,
) -> Decision:
    nominal = protocol.single_time_point_h
    tp = usable.get(nominal)
    if tp is None and forced and usable:
        tp = min(usable.values(), key=lambda t: abs(t.nominal_h - nominal))
    if tp is None:
        if forced:
            return Decision(
                Action.INCOMPLETE, f"no SPECT/CT at {nominal:g} h after the forced timeout", False
            )
        return Decision(Action.WAIT, f"missing SPECT/CT at {nominal:g} h", False)
    if reference.state is ReferenceState.PENDING and not forced:
        return Decision(
            Action.WAIT,
            f"waiting for the result of multi-time-point cycle {reference.cycle_number} to "
            "scale from",
            False,
        )
    if reference.state is ReferenceState.READY:
        reason = f"scaled from cycle {reference.cycle_number} (Hebert 2024)"
        reference_used = reference
    else:
        reason = "no multi-time-point cycle to scale from: configured fallback method"
        reference_used = NO_REFERENCE
    decision = _run(cycle, [tp], False, reason, reference_used)
    if decision.action is Action.WAIT and forced:
        return Decision(Action.INCOMPLETE, decision.reason, False)
    return decision


# -- fingerprints -------------------------------------------------------------------
def input_fingerprint(
    instances: Iterable[tuple[str, str]], settings_digest: str, extra: Sequence[str] = ()
) -> str:
    """SHA-256 of the sorted (SOP Instance UID, sha256) pairs, the settings and ``extra``.

    ``extra`` holds what else a result depends on (the reference result's
    fingerprint, the reprocess generation).
    """
    digest = hashlib.sha256()
    for uid, sha in sorted(instances):
        digest.update(f"{uid}\x1f{sha}\x1e".encode())
    digest.update(settings_digest.encode())
    for part in extra:
        digest.update(f"\x1d{part}".encode())
    return digest.hexdigest()


def settings_digest(values: dict[str, object]) -> str:
    """SHA-256 of a JSON rendering (sorted keys) of the settings a result depends on."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
