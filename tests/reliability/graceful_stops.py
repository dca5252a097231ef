"""Graceful shutdown: stop ``theranode serve`` the ways an administrator does while it works.

:func:`run_graceful_stops` sends a course to a real node process and stops it
while a job's worker is computing, and restarts it after every stop:

* SIGTERM to the node's whole process group during the first cycle job, as
  ``systemctl stop`` signals every process of the service's control group;
* SIGTERM to the node alone during the second cycle job while the first
  cycle's results are being delivered (the destination holds its answer to
  one, then answers once the signal is sent), as ``docker stop`` signals the
  container's first process;
* SIGINT to the whole process group during the course job, as Ctrl-C in a
  terminal does.

A stop is made once the job's worker has opened its log (it is computing).
After each stop the node must have exited with 0 and left the interrupted
job queued, with its version, its reason, and no worker death counted, and
the deliveries not yet answered pending. After the last restart the node
finishes by itself; the caller compares the outcome with a clean run
(:func:`tests.reliability.job_kills.compare_with_clean`).
"""

from __future__ import annotations

import contextlib
import io
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers import free_port
from tests.reliability.course_runs import (
    NodeDatabase,
    course_files,
    write_node_config,
)
from tests.reliability.destination import RecordingDestination
from tests.reliability.job_kills import JobKillReport, finish_course_run
from tests.reliability.outage import CourseRun
from tests.reliability.processes import NodeProcess, start_node
from tests.service.nodes import send
from tests.waiting import wait_for
from theranode.dicomio.synthetic_course import CourseManifest
from theranode.service.cli.main import main
from theranode.service.store.jobs import JobRecord, JobState


@dataclass(frozen=True)
class Stop:
    """One way of stopping the node, and the moment it is made."""

    name: str
    signum: int
    whole_group: bool
    kind: str  # the job computing: "cycle" or "course"
    index: int = 0  # which job of that kind
    while_delivering: bool = False  # and results are being delivered


STOPS = (
    Stop("systemctl stop (SIGTERM to the process group)", signal.SIGTERM, True, "cycle", 0),
    Stop("docker stop (SIGTERM to the node)", signal.SIGTERM, False, "cycle", 1,
         while_delivering=True),
    Stop("Ctrl-C (SIGINT to the process group)", signal.SIGINT, True, "course"),
)


@dataclass(frozen=True)
class StopRecord:
    """What a stop hit and how the node ended."""

    stop: Stop
    exit_code: int
    seconds: float
    job: JobRecord  # the interrupted job as the stopped node left it
    pending: int  # deliveries still pending after the stop
    status: str  # what `theranode status` printed then


@dataclass
class GracefulStopReport:
    stops: list[StopRecord] = field(default_factory=list)
    run: CourseRun | None = None

    def as_kill_report(self) -> JobKillReport:
        """For :func:`~tests.reliability.job_kills.compare_with_clean` (a resend of an object
        acknowledged just before a stop is allowed, as after a kill)."""
        return JobKillReport(kills=len(self.stops), run=self.run)


def _computing(db: NodeDatabase, stop: Stop,
               destination: RecordingDestination) -> Callable[[], JobRecord | None]:
    """The job once its worker is computing (it has opened the job's log) and, for a stop
    ``while_delivering``, an object is in flight to the destination."""

    def job() -> JobRecord | None:
        jobs = db.of_kind(stop.kind)
        if len(jobs) <= stop.index or jobs[stop.index].state is not JobState.RUNNING:
            return None
        if stop.while_delivering and not destination.held():
            return None
        found = jobs[stop.index]
        return found if found.log_path and Path(found.log_path).exists() else None

    return job


def _stopping(node: NodeProcess) -> int:
    """How many times the node's log says it began to shut down."""
    return node.log.read_text(errors="replace").count("received, shutting down")


def _stop_once(node: NodeProcess, db: NodeDatabase, stop: Stop,
               destination: RecordingDestination, timeout_s: float) -> StopRecord:
    stops_before = _stopping(node)
    if stop.while_delivering:
        destination.hold()
    job = wait_for(_computing(db, stop, destination), timeout_s, stop.name, poll_s=0.01)
    started = time.monotonic()
    node.signal(stop.signum, stop.whole_group)
    if stop.while_delivering:  # the object in flight is answered once the node is stopping
        wait_for(lambda: _stopping(node) > stops_before, 30, "the node to begin stopping",
                 poll_s=0.01)
        destination.release()
    code = node.wait()
    seconds = time.monotonic() - started
    after = db.jobs.get(job.id)
    assert after is not None
    return StopRecord(stop, code, seconds, after, len(db.deliveries("pending")),
                      _cli("status", node.config))


def _cli(command: str, config: Path) -> str:
    """What ``theranode COMMAND --config CONFIG`` prints."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main([command, "--config", str(config)]) == 0
    return output.getvalue()


def run_graceful_stops(work: Path, manifest: CourseManifest, cycles: int,
                       stops: tuple[Stop, ...] = STOPS, timeout_s: float = 300
                       ) -> GracefulStopReport:
    """Stop the node gracefully at each of ``stops``, restarting it each time; then let it
    finish the course and deliver everything."""
    report = GracefulStopReport()
    destination = RecordingDestination(free_port())
    destination.start()
    config, port, data_dir = write_node_config(work, destination.port)
    node = start_node(config, port, own_process_group=True)
    db = NodeDatabase(data_dir)
    try:
        assert set(send(port, course_files(manifest))) == {0}
        for stop in stops:
            report.stops.append(_stop_once(node, db, stop, destination, timeout_s))
            node = start_node(config, port, own_process_group=True)
        report.run = finish_course_run(node, db, destination, cycles, timeout_s,
                                       "after the last stop")
        return report
    finally:
        destination.release()
        node.stop()
        destination.stop()
        db.close()
