"""Turns grouped cycles into jobs: applies the completion rules and submits.

For every patient the planner reads the persisted grouping, builds a
:class:`~theranode.service.plan.completion.CycleView` per cycle, asks
:func:`theranode.service.plan.completion.decide` what to do and, for ``RUN`` or
``INCOMPLETE``, records a job whose fingerprint covers exactly the inputs used
(the SOP Instance UIDs and sha256 of the chosen series, the settings results
depend on, the reference cycle's result and the reprocess generation). The job
store ignores a second job with the same fingerprint, so the planner can be
run as often as wanted. :class:`Planner` plans one patient when asked
(:meth:`Planner.request`: after the patient's regroup, after one of its jobs
ends) and every patient at start-up and every ``poll_interval_s``, since quiet
periods and forced timeouts end with the clock, not with an event.

After its cycles, a course gets a course job over the latest result of each
computed cycle, once no cycle job of the patient is queued or running.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from theranode.config.schema import Settings
from theranode.dicomio.headers import SeriesKind
from theranode.service.clock import utc_now
from theranode.service.jobs.payload import encode_payload
from theranode.service.jobs.spec import CourseJobInput, CycleJobInput, JobKind, TimePointInput
from theranode.service.plan.completion import (
    NO_REFERENCE,
    Action,
    CycleView,
    Decision,
    Protocol,
    Reference,
    ReferenceState,
    SeriesView,
    decide,
    input_fingerprint,
    settings_digest,
)
from theranode.service.plan.grouping import State
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobRecord, JobState, JobStore

logger = logging.getLogger(__name__)


def protocol_from_settings(settings: Settings) -> Protocol:
    """The completion rules' protocol from the ``[protocol]`` settings (built only here)."""
    p = settings.protocol
    return Protocol(
        multi_time_point_cycles=frozenset(p.multi_time_point_cycles),
        multi_time_points_h=tuple(p.multi_time_points_h),
        single_time_point_h=p.single_time_point_h,
        min_time_points=p.min_time_points,
        quiet_period=timedelta(seconds=p.quiet_period_s),
        forced_timeout=timedelta(hours=p.forced_timeout_h),
    )


#: ``[dosimetry]`` settings that decide whether a result is sent, not what it is: left out
#: of the digest, so adding or changing them does not recompute every course (a held
#: cycle is recomputed with ``theranode reprocess``).
HOLD_ONLY_SETTINGS = ("max_organ_gy_per_gbq", "max_lesion_gy_per_gbq")


def result_settings_digest(settings: Settings) -> str:
    """Digest of every setting a result depends on (not timing or network settings)."""
    p = settings.protocol
    dosimetry = {k: v for k, v in dataclasses.asdict(settings.dosimetry).items()
                 if k not in HOLD_ONLY_SETTINGS}
    return settings_digest({
        "dosimetry": dosimetry,
        "calibration": dataclasses.asdict(settings.calibration),
        "protocol": {
            "single_time_point_fallback": p.single_time_point_fallback,
            "population_half_life_h": [p.population_half_life_organ_h,
                                       p.population_half_life_marrow_h,
                                       p.population_half_life_lesion_h],
            "planned_cycles": p.planned_cycles,
        },
    })


def cycle_target(patient_key: str, injection: datetime) -> str:
    return f"cycle|{patient_key}|{injection.isoformat()}"


def course_target(patient_key: str, course: int) -> str:
    return f"course|{patient_key}|{course}"


def cycle_label(course: int, cycle: int) -> str:
    return f"{course}.{cycle}"


# -- views from the index -------------------------------------------------------------
#: The series kinds the completion rules look at (a SEG is grouped but not used).
PLANNED_KINDS = frozenset({SeriesKind.SPECT, SeriesKind.CT, SeriesKind.RTSTRUCT})


def cycle_views(rows: list[dict[str, Any]], patient_key: str) -> list[CycleView]:
    """The patient's cycles from grouping rows (grouped series with a time point only)."""
    by_cycle: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if (State(row["state"]) is State.GROUPED and row["cycle"] is not None
                and row["time_point_h"] is not None
                and SeriesKind(row["role"]) in PLANNED_KINDS):
            by_cycle[(row["course"], row["cycle"])].append(row)
    views = []
    for (course, cycle), members in sorted(by_cycle.items()):
        series = tuple(
            SeriesView(
                series_uid=r["series_uid"],
                role=SeriesKind(r["role"]),
                time_point_h=float(r["time_point_h"]),
                elapsed_h=r["elapsed_h"],
                frame_of_reference_uid=r["frame_of_reference_uid"],
                last_received=datetime.fromisoformat(r["last_received"]),
            )
            for r in members
        )
        injection = datetime.fromisoformat(members[0]["injection"])
        views.append(CycleView(patient_key, course, cycle, injection, series))
    return views


@dataclass(frozen=True)
class CyclePlan:
    """A cycle, what the rules decided and the job it has (if any)."""

    view: CycleView
    decision: Decision
    target: str
    job: JobRecord | None


class Planner:
    """Applies the completion rules to patients and submits jobs.

    Started, it plans every patient at once and then every ``jobs.poll_interval_s``;
    in between, each patient named to :meth:`request`.
    """

    def __init__(
        self,
        index: IndexStore,
        jobs: JobStore,
        settings: Settings,
        on_submitted: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.index = index
        self.jobs = jobs
        self.settings = settings
        self.protocol = protocol_from_settings(settings)
        self.digest = result_settings_digest(settings)
        self.on_submitted = on_submitted
        self.clock = clock
        self._requested: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="planner", daemon=True)

    # -- one patient -------------------------------------------------------------
    def plan_patient(self, patient_key: str, submit: bool = True) -> list[CyclePlan]:
        """Decide every cycle of a patient; submit jobs unless ``submit`` is False."""
        now = self.clock()
        views = cycle_views(self.index.grouping_of_patient(patient_key), patient_key)
        plans: list[CyclePlan] = []
        for view in views:
            reference = self._reference(view, views)
            decision = decide(view, self.protocol, now, reference)
            target = cycle_target(patient_key, view.injection)
            job = self._submit_cycle(view, decision, target) if submit else None
            plans.append(CyclePlan(view, decision, target, job or self._current(target)))
        if submit:
            for course in sorted({v.course for v in views}):
                self._submit_course(patient_key, course, [v for v in views if v.course == course])
        return plans

    def _current(self, target: str) -> JobRecord | None:
        jobs = self.jobs.of_target(target)
        return jobs[-1] if jobs else None

    def _reference(self, view: CycleView, views: list[CycleView]) -> Reference:
        """The multi-time-point cycle a single-time-point cycle is scaled from."""
        if self.protocol.is_multi_time_point(view.cycle):
            return NO_REFERENCE
        candidates = [v for v in views if v.course == view.course and v.cycle < view.cycle
                      and self.protocol.is_multi_time_point(v.cycle)]
        if not candidates:
            return NO_REFERENCE
        latest = max(candidates, key=lambda v: v.cycle)
        target = cycle_target(view.patient_key, latest.injection)
        done = self.jobs.latest_done(target)
        if done is not None:
            return Reference(ReferenceState.READY, latest.cycle, done.result_dir,
                             f"{done.fingerprint}:{done.version}")
        current = self._current(target)
        if current is not None and current.state in (JobState.FAILED, JobState.INCOMPLETE):
            return NO_REFERENCE
        return Reference(ReferenceState.PENDING, latest.cycle)

    def _submit_cycle(self, view: CycleView, decision: Decision, target: str) -> JobRecord | None:
        if decision.action is Action.WAIT:
            return None
        instances = self.index.input_instances(list(decision.series_uids)) if (
            decision.action is Action.RUN) else self._all_instances(view)
        extra = [decision.action.value, str(self.jobs.generation(target)),
                 decision.reference.fingerprint]
        fingerprint = input_fingerprint(
            ((r["sop_instance_uid"], r["sha256"]) for r in instances), self.digest, extra
        )
        payload = None
        if decision.action is Action.RUN:
            payload = encode_payload(self._cycle_input(view, decision, instances))
        job = self.jobs.submit(
            kind=JobKind.CYCLE.value, target=target, patient_key=view.patient_key,
            label=cycle_label(view.course, view.cycle), fingerprint=fingerprint,
            payload=payload, created_at=self.clock().isoformat(),
            state=JobState.QUEUED if decision.action is Action.RUN else JobState.INCOMPLETE,
            message=decision.reason,
        )
        if job is not None:
            self._announce(job, decision)
        return job

    def _all_instances(self, view: CycleView) -> list[dict[str, Any]]:
        return self.index.input_instances([s.series_uid for s in view.series])

    def _announce(self, job: JobRecord, decision: Decision) -> None:
        if job.state is JobState.INCOMPLETE:
            logger.warning("ALERT: cycle %s of patient %s is incomplete (job %d): %s",
                           job.label, job.patient_key, job.id, decision.reason)
            return
        logger.info("Job %d queued: cycle %s of patient %s (%s)",
                    job.id, job.label, job.patient_key, decision.reason)
        self.on_submitted()

    @staticmethod
    def _cycle_input(
        view: CycleView, decision: Decision, instances: list[dict[str, Any]]
    ) -> CycleJobInput:
        files: dict[str, list[str]] = defaultdict(list)
        for row in instances:
            files[row["series_uid"]].append(row["path"])
        assert decision.rtstruct_uid is not None
        return CycleJobInput(
            cycle_number=view.cycle,
            injection=view.injection.isoformat(),
            multi_time_point=decision.multi_time_point,
            time_points=tuple(
                TimePointInput(tp.nominal_h, tp.elapsed_h, tuple(files[tp.spect_uid]),
                               tuple(files[tp.ct_uid]))
                for tp in decision.time_points
            ),
            rtstruct_file=files[decision.rtstruct_uid][-1],
            reference_result=decision.reference.result_dir,
        )

    def _submit_course(self, patient_key: str, course: int, views: list[CycleView]) -> None:
        if self.jobs.active_of_patient(patient_key, JobKind.CYCLE.value):
            return
        done = []
        for view in sorted(views, key=lambda v: v.cycle):
            job = self.jobs.latest_done(cycle_target(patient_key, view.injection))
            if job is not None and job.result_dir:
                done.append(job)
        if not done:
            return
        target = course_target(patient_key, course)
        parts = [f"{j.fingerprint}:{j.version}" for j in done]
        fingerprint = input_fingerprint(
            (), self.digest, [*parts, str(self.jobs.generation(target))]
        )
        payload = encode_payload(CourseJobInput(tuple(j.result_dir or "" for j in done)))
        job = self.jobs.submit(
            kind=JobKind.COURSE.value, target=target, patient_key=patient_key,
            label=f"{course}", fingerprint=fingerprint, payload=payload,
            created_at=self.clock().isoformat(),
            message=f"course over cycles {', '.join(j.label for j in done)}",
        )
        if job is not None:
            logger.info("Job %d queued: course %d of patient %s", job.id, course, patient_key)
            self.on_submitted()

    # -- background loop -------------------------------------------------------------
    def plan_all(self) -> None:
        """Plan every patient of the index (a failure is logged, the others still planned)."""
        for key in self.index.patient_keys():
            self._plan_logged(key)

    def request(self, patient_key: str) -> None:
        """Ask for ``patient_key`` to be planned soon (after its regroup, when its job ends)."""
        with self._lock:
            self._requested.add(patient_key)
        self._wake.set()

    def _plan_logged(self, patient_key: str) -> None:
        try:
            self.plan_patient(patient_key)
        except Exception:
            logger.exception("Planning failed for patient %s", patient_key)

    def _take_requested(self) -> list[str]:
        with self._lock:
            keys, self._requested = sorted(self._requested), set()
        return keys

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        """Every patient now and every poll interval (requests do not postpone it); in
        between, the requested patients."""
        interval_s = self.settings.jobs.poll_interval_s
        next_full = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_full - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            requested = self._take_requested()
            if time.monotonic() >= next_full:
                self.plan_all()
                next_full = time.monotonic() + interval_s
                continue
            for key in requested:
                self._plan_logged(key)
