"""Re-runs grouping off the association threads whenever a series arrives.

Grouping itself is the pure :func:`theranode.service.plan.grouping.group_patient`; this
module converts the ``[grouping]`` settings (:func:`rules_from_settings`, the one
translation) and index rows into its inputs, persists its output and runs it
on a background thread so a C-STORE never waits for it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import Any

from theranode.config.schema import GroupingSettings
from theranode.dicomio.headers import SeriesKind
from theranode.service.plan.grouping import GroupingRules, Placement, SeriesFacts, group_patient
from theranode.service.store.index import IndexStore

logger = logging.getLogger(__name__)

_STOP = object()


def rules_from_settings(grouping: GroupingSettings) -> GroupingRules:
    """The grouping rules of the ``[grouping]`` settings (every caller builds them here)."""
    return GroupingRules(
        windows=tuple(grouping.time_points),
        same_injection_tolerance=timedelta(minutes=grouping.same_injection_tolerance_min),
        new_course_after=timedelta(days=grouping.new_course_after_days),
    )


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def facts_from_row(row: dict[str, Any]) -> SeriesFacts:
    return SeriesFacts(
        series_uid=row["series_uid"],
        role=SeriesKind(row["kind"]),
        study_uid=row["study_uid"],
        frame_of_reference_uid=row["frame_of_reference_uid"],
        referenced_frames=tuple(json.loads(row["referenced_frames"] or "[]")),
        acquired=_dt(row["acquired"]),
        injection_start=_dt(row["injection_start"]),
        injection_time=time.fromisoformat(row["injection_time"]) if row["injection_time"] else None,
        injection_event_uid=row["injection_event_uid"],
        radionuclide=row["radionuclide"],
    )


def placement_row(patient_key: str, p: Placement) -> dict[str, Any]:
    return {
        "series_uid": p.series_uid,
        "patient_key": patient_key,
        "course": p.course,
        "cycle": p.cycle,
        "injection": p.injection.isoformat() if p.injection else None,
        "injection_source": p.injection_source,
        "time_point_h": p.time_point_h,
        "elapsed_h": p.elapsed_h,
        "role": p.role.value,
        "state": p.state.value,
        "note": p.note,
    }


def regroup_patient(index: IndexStore, rules: GroupingRules, patient_key: str) -> list[Placement]:
    """Group one patient from the index and persist the result (in one transaction)."""
    placements: list[Placement] = []

    def group(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
        placements[:] = group_patient([facts_from_row(row) for row in series], rules)
        return [placement_row(patient_key, p) for p in placements]

    index.regroup(patient_key, group)
    return placements


class Regrouper:
    """A background thread that regroups patients as their series arrive.

    ``on_grouped`` is called with the patient key after each patient's grouping is stored.
    Every ``check_every_s`` with nothing requested, it also regroups the patients that
    have a series without a grouping row (:meth:`IndexStore.ungrouped_patient_keys`): on a
    shared database, a series whose first instance a node indexed just before it was
    killed would otherwise wait for the patient's next series or the next start of a node.
    A patient whose grouping failed is left to its next request (a new series), so a
    grouping error is logged once, not every period.
    """

    def __init__(
        self,
        index: IndexStore,
        rules: GroupingRules,
        on_grouped: Callable[[str], None] = lambda patient_key: None,
        check_every_s: float = 5.0,
    ) -> None:
        self.index = index
        self.rules = rules
        self.on_grouped = on_grouped
        self.check_every_s = check_every_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._pending: set[str] = set()
        self._failed: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="regrouper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def request(self, patient_key: str) -> None:
        """Ask for ``patient_key`` to be regrouped (coalesced while queued)."""
        with self._lock:
            if patient_key in self._pending:
                return
            self._pending.add(patient_key)
            self._failed.discard(patient_key)
            self._idle.clear()
        self._queue.put(patient_key)

    def request_ungrouped(self) -> list[str]:
        """Request every patient with an ungrouped series, except those that failed and
        those already waiting for their regrouping (a series that has just arrived)."""
        with self._lock:
            skip = self._failed | self._pending
        keys = [key for key in self.index.ungrouped_patient_keys() if key not in skip]
        if keys:
            logger.info("Regrouping %d patient(s) with a series nobody grouped (indexed by "
                        "a node that stopped before grouping it?)", len(keys))
        for key in keys:
            self.request(key)
        return keys

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until no regrouping is queued or running (for tests and shutdown)."""
        return self._idle.wait(timeout_s)

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.check_every_s)
            except queue.Empty:
                try:
                    self.request_ungrouped()
                except Exception:
                    logger.exception("Looking for ungrouped series failed")
                continue
            if item is _STOP:
                return
            key = str(item)
            with self._lock:
                self._pending.discard(key)
            try:
                regroup_patient(self.index, self.rules, key)
                self.on_grouped(key)
            except Exception:
                with self._lock:
                    self._failed.add(key)
                logger.exception("Grouping failed for patient %s", key)
            with self._lock:
                if not self._pending:
                    self._idle.set()
