"""`theranode status`: what each patient's cycles hold and what is missing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from theranode.dicomio.headers import SeriesKind
from theranode.service.cli.terminal_text import terminal_lines
from theranode.service.plan.completion import Protocol
from theranode.service.plan.grouping import State
from theranode.service.store.index import IndexStore


@dataclass
class TimePointStatus:
    nominal_h: float
    spect: list[dict[str, Any]] = field(default_factory=list)
    ct: list[dict[str, Any]] = field(default_factory=list)
    structures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CycleStatus:
    course: int
    cycle: int
    injection: str
    injection_source: str
    time_points: dict[float, TimePointStatus] = field(default_factory=dict)

    def missing(self, protocol: Protocol) -> list[str]:
        """What the cycle lacks for dosimetry under ``protocol``, in words."""
        gaps = []
        for nominal in protocol.expected_time_points(self.cycle):
            tp = self.time_points.get(nominal)
            if tp is None or not tp.spect:
                gaps.append(f"{nominal:g} h SPECT")
            if tp is None or not tp.ct:
                gaps.append(f"{nominal:g} h CT")
        if not any(tp.structures for tp in self.time_points.values()):
            gaps.append("RTSTRUCT")
        return gaps


def cycles_of(rows: list[dict[str, Any]]) -> tuple[list[CycleStatus], list[dict[str, Any]]]:
    """Cycles built from grouping rows, and the rows not placed in any cycle."""
    cycles: dict[tuple[int, int], CycleStatus] = {}
    loose = []
    for row in rows:
        state = State(row["state"])
        if state in (State.GROUPED, State.IGNORED) and row["cycle"] is not None:
            key = (row["course"], row["cycle"])
            cycle = cycles.setdefault(
                key, CycleStatus(row["course"], row["cycle"], row["injection"],
                                 row["injection_source"]))
            if state is State.IGNORED or row["time_point_h"] is None:
                loose.append(row)
                continue
            tp = cycle.time_points.setdefault(row["time_point_h"],
                                              TimePointStatus(row["time_point_h"]))
            slots = {SeriesKind.SPECT: tp.spect, SeriesKind.CT: tp.ct}
            slots.get(SeriesKind(row["role"]), tp.structures).append(row)
        else:
            loose.append(row)
    return [cycles[k] for k in sorted(cycles)], loose


def render_status(index: IndexStore, protocol: Protocol) -> Iterator[str]:
    """Lines of the status report, patient by patient.

    PatientIDs, notes and reasons come from what peers sent: every line is
    escaped for the terminal (:mod:`theranode.service.cli.terminal_text`).
    """
    return terminal_lines(_status_lines(index, protocol))


def _status_lines(index: IndexStore, protocol: Protocol) -> Iterator[str]:
    counts = index.counts()
    yield (f"{counts['patients']} patient(s), {counts['series']} series, "
           f"{counts['instances']} instance(s); {counts['quarantine']} quarantined, "
           f"{counts['conflicts']} conflicting duplicate(s)")
    for key in index.patient_keys():
        yield ""
        yield f"Patient {index.patient_id(key)} (key {key})"
        cycles, loose = cycles_of(index.grouping_of_patient(key))
        for cycle in cycles:
            yield (f"  Course {cycle.course} cycle {cycle.cycle}: injected {cycle.injection} "
                   f"(from {cycle.injection_source})")
            for nominal, tp in sorted(cycle.time_points.items()):
                elapsed = ", ".join(f"{r['elapsed_h']:.1f} h" for r in tp.spect) or "-"
                yield (f"    {nominal:>5g} h: SPECT {len(tp.spect)} (at {elapsed}), CT {len(tp.ct)}"
                       f", structures {len(tp.structures)}")
            missing = cycle.missing(protocol)
            yield "    missing: " + (", ".join(missing) if missing else "nothing")
        for row in loose:
            yield f"  {row['role']} {row['series_uid']}: {row['state']} - {row['note']}"
    for row in index.recent_quarantine(10):
        yield f"Quarantined {row['path']} (0x{row['status']:04X}): {row['reason']}"
    for row in index.recent_conflicts(10):
        yield f"Conflicting duplicate of {row['sop_instance_uid']} kept as {row['path']}"
