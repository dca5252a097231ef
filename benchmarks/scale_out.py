"""Scale-out throughput: ingest with 1 vs 2 ``theranode serve`` nodes and jobs with 1 vs 2
``theranode worker`` processes on one PostgreSQL database, as processes on this machine.

What is measured, in one run, with the configurations taking turns repeat by repeat (so a
slow spell of the machine falls on both):

- **ingest**: :data:`INGEST_SENDERS` senders store ``--instances`` CT instances (64×64,
  each sender its own patient and series) through the round-robin load balancer of
  :mod:`tests.reliability.scale_out` (a new association every
  :data:`INGEST_PER_ASSOCIATION` instances, each to the next node), into 1 node or 2 nodes
  on one database and data folder; instances/s = instances / wall time from the first
  association to the last acknowledgement. No job is made (no structure set).
- **jobs**: ``--patients`` patients' first cycle (four time points each, small grids) are
  stored into one node with no worker running; once every cycle job is queued, 1 or 2
  workers start; jobs/min = (cycle jobs + the course jobs that follow) / the time from the
  first job's start to the last job's end (the jobs table's own times).

Each ratio (2 nodes / 1 node, 2 workers / 1 worker) is taken per repeat, from the two
configurations measured back to back, and printed as the median with its min–max.

This machine has two cores, shared by the PostgreSQL server, the nodes, the workers and
their job processes (and the senders). A job is CPU-bound in one process, so two workers
can at most about double job throughput here, and less while anything else runs; ingest
is bound by fsync and the database's write lock as much as by CPU, so a second node on the
same two cores and the same disk is not expected to double it either. The ratios measure
what this machine gives, not what two machines would.

With ``--faults`` it also runs the full-size fault scenario of
tests/reliability/test_scale_out.py: four patients' four-cycle courses from four senders
(one per patient) through two nodes and two workers, a node and a worker SIGKILLed midway
and restarted, compared with a single-node SQLite run of the same files (several minutes;
``--faults-only`` runs that alone).

Run from the repository's root: ``.venv/bin/python -m benchmarks.scale_out [--repeat 3]
[--instances 2000] [--patients 4] [--faults | --faults-only]``; ``--quick`` for a smoke run
of the command.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.peers import free_port
from tests.postgres import PostgresServer, run_postgres
from tests.reliability.combined_kills import (
    clean_run_problems,
    compare_with_clean,
    write_patients,
)
from tests.reliability.kills import write_senders
from tests.reliability.scale_out import (
    Balancer,
    ClusterDatabase,
    Faults,
    keep_sending,
    patient_senders,
    run_cluster,
    start_cluster,
    start_worker,
)
from tests.waiting import wait_for
from theranode.service.store.jobs import JobState

INGEST_SENDERS = 4
INGEST_PER_ASSOCIATION = 50
SEED = 90


@dataclass(frozen=True)
class Sample:
    """One configuration measured once."""

    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def measure_ingest(work: Path, url: str, senders_files: Path, nodes: int,
                   instances: int) -> Sample:
    """``instances`` CT instances from :data:`INGEST_SENDERS` senders into ``nodes`` nodes."""
    senders = write_senders(senders_files, INGEST_SENDERS, instances // INGEST_SENDERS)
    cluster = start_cluster(work, work / "data", url, free_port(), nodes, 0)
    try:
        balancer = Balancer(cluster.ports())
        threads = [threading.Thread(target=keep_sending, args=(balancer, s),
                                    kwargs={"per_association": INGEST_PER_ASSOCIATION})
                   for s in senders]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
    finally:
        cluster.stop()
    acknowledged = sum(len(s.acknowledged) for s in senders)
    if acknowledged != sum(len(s.files) for s in senders):
        raise RuntimeError(f"ingest with {nodes} node(s): only {acknowledged} acknowledged")
    return Sample(acknowledged, seconds)


def _iso(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def measure_jobs(work: Path, url: str, courses: Path, patients: int, workers: int) -> Sample:
    """``patients`` first cycles stored into one node, then computed by ``workers`` workers."""
    manifests = write_patients(courses, patients, (1,), SEED)
    data_dir = work / "data"
    cluster = start_cluster(work, data_dir, url, free_port(), 1, 0)
    db = ClusterDatabase(data_dir, url)
    try:
        balancer = Balancer(cluster.ports())
        for sender in patient_senders(manifests, 1, per_patient=1):
            keep_sending(balancer, sender)
        wait_for(lambda: len(db.of_kind("cycle", JobState.QUEUED)) == patients, 120,
                 "every cycle job queued")
        for i in range(workers):
            name = f"worker-{i + 1}"
            config = work / f"{name}.toml"
            config.write_text(cluster.nodes["node-a"].config.read_text().replace(
                'name = "node-a"', f'name = "{name}"'))
            cluster.workers[name] = start_worker(config)
        wait_for(lambda: len(db.of_kind("course", JobState.DONE)) == patients
                 and len(db.of_kind("cycle", JobState.DONE)) == patients, 3600,
                 "every cycle and course job done")
        jobs = db.all_jobs()
    finally:
        cluster.stop()
        db.close()
    first = min(_iso(j.started_at) for j in jobs)
    last = max(_iso(j.finished_at) for j in jobs)
    return Sample(len(jobs), (last - first).total_seconds())


def _spread(values: list[float], unit: str, digits: int = 1) -> str:
    return (f"median {statistics.median(values):.{digits}f}{unit} "
            f"(min–max {min(values):.{digits}f}–{max(values):.{digits}f}, n={len(values)})")


def compare(label: str, unit: str, one: list[Sample], two: list[Sample], scale: float,
            names: tuple[str, str]) -> list[str]:
    """Lines for one comparison: each configuration's rate and the per-repeat ratios."""
    ratios = [b.rate / a.rate for a, b in zip(one, two, strict=True)]
    return [label,
            f"  {names[0]:<10} {_spread([s.rate * scale for s in one], unit)}",
            f"  {names[1]:<10} {_spread([s.rate * scale for s in two], unit)}",
            f"  ratio {names[1]}/{names[0]}: {_spread(ratios, '×', 2)}"]


def alternate(repeat: int, measure: Callable[[int, int], Sample]) -> tuple[list[Sample],
                                                                           list[Sample]]:
    """Measure configurations 1 and 2 ``repeat`` times, taking turns (2, 1 on odd repeats)."""
    results: dict[int, list[Sample]] = {1: [], 2: []}
    for r in range(repeat):
        for n in ((1, 2) if r % 2 == 0 else (2, 1)):
            sample = measure(r, n)
            results[n].append(sample)
            print(f"    repeat {r + 1}, {n}: {sample.count} in {sample.seconds:.1f} s",
                  flush=True)
    return results[1], results[2]


def run_faults(work: Path, server: PostgresServer, patients: int) -> list[str]:
    """The full-size fault scenario; its problems (empty: every promise held)."""
    manifests = write_patients(work / "courses", patients, (1, 2, 3, 4), SEED)
    clean = run_cluster(work / "clean", manifests, None, senders_per_patient=1, timeout_s=900)
    url = server.create_database()
    report = run_cluster(work / "cluster", manifests, url, faults=Faults(),
                         senders_per_patient=1, timeout_s=900)
    print("\n".join(f"  {m}" for m in report.moments))
    print(f"  clean run {clean.seconds:.0f} s, two nodes and two workers {report.seconds:.0f} s; "
          f"instances per node {report.acknowledged_per_node}")
    problems = clean.problems + clean_run_problems(clean.combined()) + report.problems
    if report.acknowledged_while_node_down == 0:
        problems.append("nothing was acknowledged while the node was down")
    if not report.worker_kill_hit_job:
        problems.append("the worker kill did not hit a running job")
    return problems + compare_with_clean(report.combined(), clean.combined())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="repeats of each configuration")
    parser.add_argument("--instances", type=int, default=2000, help="instances per ingest run")
    parser.add_argument("--patients", type=int, default=4, help="patients per jobs run")
    parser.add_argument("--faults", action="store_true", help="also the full-size fault run")
    parser.add_argument("--faults-only", action="store_true",
                        help="only the full-size fault run (no throughput ratios)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to try the command")
    args = parser.parse_args(argv)
    args.faults = args.faults or args.faults_only
    if args.quick:
        args.repeat, args.instances, args.patients = 1, 200, 2
    print(f"theranode scale-out benchmark on {platform.node()}: {platform.processor() or '?'}, "
          f"Python {platform.python_version()}; {args.repeat} repeat(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="theranode-scale-out-") as tmp, \
            run_postgres() as server:
        root = Path(tmp)
        if args.faults_only:
            return _faults(root, server, args.quick)
        print(f"ingest: {args.instances} CT instances (64×64) from {INGEST_SENDERS} senders, "
              f"a new association every {INGEST_PER_ASSOCIATION}", flush=True)
        ingest = alternate(args.repeat, lambda r, n: measure_ingest(
            root / f"ingest-{r}-{n}", server.create_database(), root / f"files-{r}-{n}", n,
            args.instances))
        print(f"jobs: {args.patients} patients' first cycle (4 time points, small grids): "
              f"{args.patients} cycle and {args.patients} course jobs", flush=True)
        jobs = alternate(args.repeat, lambda r, n: measure_jobs(
            root / f"jobs-{r}-{n}", server.create_database(), root / f"courses-{r}-{n}",
            args.patients, n))
        print("\n".join(compare("ingest (instances/s)", "/s", *ingest, 1.0, ("1 node", "2 nodes"))
                        + compare("jobs (jobs/min)", "/min", *jobs, 60.0,
                                  ("1 worker", "2 workers"))), flush=True)
        if args.faults:
            return _faults(root, server, args.quick)
    return 0


def _faults(root: Path, server: PostgresServer, quick: bool) -> int:
    print("faults: 4 patients × 4-cycle courses, 4 senders, 2 nodes, 2 workers, "
          "node and worker SIGKILLed midway", flush=True)
    started = time.monotonic()
    problems = run_faults(root / "faults", server, 4 if not quick else 2)
    print("  every promise held" if not problems else "\n".join(problems[:40]))
    print(f"  {time.monotonic() - started:.0f} s in all (writing the courses, both runs)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
