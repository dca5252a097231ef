"""Patient → course → cycle → time point grouping, as a pure function.

:func:`group_patient` places every series of one patient from its indexed
header facts alone, so it can be re-run whenever a series arrives and gives
the same answer after a restart.

Rules (docs/interoperability.md, "Grouping keys"):

1. An administration (cycle) is identified by the Radiopharmaceutical
   Administration Event UID when present, else by
   RadiopharmaceuticalStartDateTime; start date-times closer than the
   configured tolerance are the same administration.
2. A SPECT that carries only RadiopharmaceuticalStartTime joins a known
   administration with the same time of day that precedes it by no more than
   the longest time-point window; otherwise series with the same start time
   and scans less than that window apart form one administration dated by its
   earliest scan (the day before when the start time is later than that scan).
   A time alone is ambiguous for 72/192 h scans, which is why the earliest scan
   dates it.
3. Administrations more than ``new_course_after`` apart start a new course;
   cycles are numbered 1, 2, … within a course.
4. Time point = acquisition − injection, binned by the configured windows.
5. A CT joins the SPECT with its Frame of Reference UID (closest in time when
   several share it), else the SPECT of its study closest in time.
6. An RTSTRUCT joins the CT whose Frame of Reference it references (a SEG the
   CT with its own Frame of Reference); until that CT arrives it is *held*.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta

from theranode.config.schema import TimePointWindow
from theranode.dicomio.headers import SeriesKind

LU177 = "Lu-177"


class State(str, enum.Enum):
    """Where grouping left a series (stored as its value in the index's grouping rows)."""

    GROUPED = "grouped"
    HELD = "held"  # waiting for a series it depends on
    UNGROUPED = "ungrouped"  # cannot be placed from its headers
    IGNORED = "ignored"  # placed, but not usable for Lu-177 dosimetry


@dataclass(frozen=True)
class SeriesFacts:
    """The indexed header facts of one series."""

    series_uid: str
    role: SeriesKind
    study_uid: str
    frame_of_reference_uid: str | None = None
    referenced_frames: tuple[str, ...] = ()
    acquired: datetime | None = None
    injection_start: datetime | None = None
    injection_time: time | None = None
    injection_event_uid: str | None = None
    radionuclide: str | None = None


@dataclass(frozen=True)
class GroupingRules:
    """The ``[grouping]`` settings with their durations as :class:`~datetime.timedelta`.

    Built from the settings by :func:`theranode.service.plan.regroup.rules_from_settings`
    only; the windows are the settings' own :class:`~theranode.config.schema.TimePointWindow`.
    """

    windows: tuple[TimePointWindow, ...]
    same_injection_tolerance: timedelta
    new_course_after: timedelta

    @property
    def longest_window(self) -> timedelta:
        return timedelta(hours=max(w.max_h for w in self.windows))

    def bin(self, elapsed_h: float) -> float | None:
        for window in self.windows:
            if window.min_h <= elapsed_h < window.max_h:
                return window.nominal_h
        return None


@dataclass(frozen=True)
class Placement:
    """Where one series belongs."""

    series_uid: str
    role: SeriesKind
    state: State
    course: int | None = None
    cycle: int | None = None
    injection: datetime | None = None
    injection_source: str = ""
    time_point_h: float | None = None
    elapsed_h: float | None = None
    note: str = ""


@dataclass
class _Administration:
    start: datetime
    source: str
    event_uids: set[str] = field(default_factory=set)
    course: int = 0
    cycle: int = 0


# -- administrations -------------------------------------------------------
def _tod_distance(a: time, b: time) -> timedelta:
    seconds = abs(
        (a.hour * 3600 + a.minute * 60 + a.second) - (b.hour * 3600 + b.minute * 60 + b.second)
    )
    return timedelta(seconds=min(seconds, 86400 - seconds))


def _full_starts(spects: Sequence[SeriesFacts]) -> dict[str, tuple[datetime, str]]:
    """Series → (start, source) for series whose administration has a full date-time."""
    by_event: dict[str, datetime] = {}
    for s in spects:
        if s.injection_event_uid and s.injection_start:
            by_event.setdefault(s.injection_event_uid, s.injection_start)
    starts = {}
    for s in spects:
        if s.injection_start is not None:
            starts[s.series_uid] = (s.injection_start, "RadiopharmaceuticalStartDateTime")
        elif s.injection_event_uid in by_event:
            starts[s.series_uid] = (
                by_event[s.injection_event_uid],
                "RadiopharmaceuticalAdministrationEventUID",
            )
    return starts


def _cluster(
    starts: dict[str, tuple[datetime, str]],
    events: dict[str, str | None],
    rules: GroupingRules,
) -> tuple[list[_Administration], dict[str, _Administration]]:
    administrations: list[_Administration] = []
    member: dict[str, _Administration] = {}
    for uid, (start, source) in sorted(starts.items(), key=lambda kv: (kv[1][0], kv[0])):
        event = events.get(uid)
        match = next(
            (
                a
                for a in administrations
                if (event and event in a.event_uids)
                or abs(a.start - start) <= rules.same_injection_tolerance
            ),
            None,
        )
        if match is None:
            match = _Administration(start=start, source=source)
            administrations.append(match)
        if event:
            match.event_uids.add(event)
        member[uid] = match
    return administrations, member


def _place_time_only(
    spects: Sequence[SeriesFacts],
    administrations: list[_Administration],
    member: dict[str, _Administration],
    rules: GroupingRules,
) -> None:
    pending = sorted(
        (s for s in spects if s.series_uid not in member and s.injection_time and s.acquired),
        key=lambda s: s.acquired or datetime.min,
    )
    tolerance = rules.same_injection_tolerance
    for s in pending:
        assert s.injection_time is not None and s.acquired is not None
        acquired = s.acquired
        known = [
            a
            for a in administrations
            if _tod_distance(a.start.time(), s.injection_time) <= tolerance
            and timedelta(0) <= acquired - a.start <= rules.longest_window
        ]
        if known:
            member[s.series_uid] = max(known, key=lambda a: a.start)
            continue
        start = datetime.combine(acquired.date(), s.injection_time)
        if start > acquired:
            start -= timedelta(days=1)
        administration = _Administration(
            start=start, source="RadiopharmaceuticalStartTime + date of the cycle's earliest scan"
        )
        administrations.append(administration)
        member[s.series_uid] = administration


def _number(administrations: list[_Administration], rules: GroupingRules) -> None:
    course, cycle, previous = 0, 0, None
    for a in sorted(administrations, key=lambda a: a.start):
        if previous is None or a.start - previous > rules.new_course_after:
            course, cycle = course + 1, 0
        cycle += 1
        a.course, a.cycle, previous = course, cycle, a.start


# -- placements --------------------------------------------------------------
def _place_spect(s: SeriesFacts, a: _Administration | None, rules: GroupingRules) -> Placement:
    if a is None:
        return Placement(
            s.series_uid, SeriesKind.SPECT, State.UNGROUPED,
            note="no injection date or time in RadiopharmaceuticalInformationSequence",
        )
    base = Placement(
        s.series_uid, SeriesKind.SPECT, State.GROUPED, course=a.course, cycle=a.cycle,
        injection=a.start, injection_source=a.source,
    )
    if s.acquired is None:
        return replace(base, state=State.UNGROUPED, note="no acquisition date and time")
    elapsed_h = (s.acquired - a.start) / timedelta(hours=1)
    base = replace(base, elapsed_h=round(elapsed_h, 4))
    nominal = rules.bin(elapsed_h)
    if nominal is None:
        return replace(
            base, state=State.UNGROUPED,
            note=f"acquired {elapsed_h:.1f} h after injection, outside every time-point window",
        )
    if s.radionuclide not in (None, LU177):
        return replace(
            base, time_point_h=nominal, state=State.IGNORED,
            note=f"radionuclide {s.radionuclide} is not Lu-177",
        )
    return replace(base, time_point_h=nominal)


def _closest(candidates: Iterable[Placement], facts: dict[str, SeriesFacts],
             when: datetime | None) -> Placement | None:
    options = list(candidates)
    if not options:
        return None
    if when is None:
        return options[0]

    def distance(p: Placement) -> timedelta:
        acquired = facts[p.series_uid].acquired
        return abs(acquired - when) if acquired else timedelta.max

    return min(options, key=distance)


def _follow(
    s: SeriesFacts, host: Placement | None, role: SeriesKind, waiting: str
) -> Placement:
    if host is None:
        return Placement(s.series_uid, role, State.HELD, note=waiting)
    note = f"belongs to an ignored SPECT: {host.note}" if host.state is State.IGNORED else ""
    return replace(host, series_uid=s.series_uid, role=role, note=note)


def group_patient(series: Sequence[SeriesFacts], rules: GroupingRules) -> list[Placement]:
    """Place every series of one patient (see the module docstring for the rules)."""
    spects = [s for s in series if s.role is SeriesKind.SPECT]
    facts = {s.series_uid: s for s in series}
    starts = _full_starts(spects)
    administrations, member = _cluster(
        starts, {s.series_uid: s.injection_event_uid for s in spects}, rules
    )
    _place_time_only(spects, administrations, member, rules)
    _number(administrations, rules)
    placed = {s.series_uid: _place_spect(s, member.get(s.series_uid), rules) for s in spects}
    usable = [p for p in placed.values() if p.time_point_h is not None]

    for s in series:
        if s.role is not SeriesKind.CT:
            continue
        same_frame = [p for p in usable
                      if facts[p.series_uid].frame_of_reference_uid == s.frame_of_reference_uid
                      and s.frame_of_reference_uid]
        host = _closest(same_frame, facts, s.acquired)
        if host is None:
            same_study = [p for p in usable if facts[p.series_uid].study_uid == s.study_uid]
            host = _closest(same_study, facts, s.acquired)
        placed[s.series_uid] = _follow(
            s, host, SeriesKind.CT, "waiting for a SPECT with its frame of reference or study"
        )
    cts = [p for p in placed.values() if p.role is SeriesKind.CT and p.state is not State.HELD]
    for s in series:
        if s.role not in (SeriesKind.RTSTRUCT, SeriesKind.SEG):
            continue
        frames = s.referenced_frames if s.role is SeriesKind.RTSTRUCT else (
            (s.frame_of_reference_uid,) if s.frame_of_reference_uid else ())
        host = _closest(
            (p for p in cts if facts[p.series_uid].frame_of_reference_uid in frames), facts, None
        )
        placed[s.series_uid] = _follow(
            s, host, s.role,
            "waiting for a CT with frame of reference " + (", ".join(frames) or "(none given)"),
        )
    return [placed[s.series_uid] for s in series]
