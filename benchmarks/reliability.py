"""The full-size fault, load and hostile-input suite; regenerates docs/reliability.md.

Runs, on loopback, the same scenarios as ``tests/reliability/`` at full size:

- hostile input: the corpus of ``tests/reliability/corpus.py`` (default 1,040
  objects) over real associations;
- load: 8 parallel dcmtk ``storescu`` associations sending 20,000 instances,
  with a ninth peer asking for an association whenever all eight are connected;
- crash safety: 50 SIGKILLs of ``theranode serve`` at random moments under 4
  parallel senders, verifying after every restart;
- jobs under kills and outage: a four-cycle course computed while its DICOM
  destination is down (then up), and again under 20 SIGKILLs spread over its
  cycle jobs, course job and deliveries, compared with the first run;
- everything at once: 4 parallel senders store 4 patients' four-cycle
  courses while the node computes and delivers them, under 50 SIGKILLs aimed
  at ingest, ingest with jobs, jobs and delivery, compared with the same run
  without kills;
- hostile input processed: ``tests/reliability/test_hostile_processing.py``
  (six spoiled cycles next to a good patient), already full size;
- disk full and access (TLS, refusals, log without identities): the test
  modules themselves, which are already full size, run through pytest;
- hostile peers: 50 idle sockets, 10 partial and 10 256 MiB A-ASSOCIATE-RQs
  and 8 idle echoing associations held against the node while a sender stores
  a two-cycle course, and every bomb (deflate, sequence items, elements,
  contour points, 2,000 contour planes) sent alone, then again during the
  course (``tests/reliability/hostile_peers.py: run_hostile_course``).

Every figure in ``docs/reliability.md`` is measured by the run that wrote it.

Run: ``.venv/bin/python benchmarks/reliability.py [--quick] [--no-write]
[--only hostile-peers]`` (``--quick`` uses the CI sizes, for trying the
command itself; ``--only hostile-peers`` measures that section alone and
replaces it in ``docs/reliability.md`` between its HTML-comment markers,
leaving the other sections as their own run wrote them).
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability import combined_kills
from tests.reliability.combined_kills import (
    DELIVERY,
    IDLE,
    INGEST,
    INGEST_JOBS,
    JOBS,
    PACS_ANSWER_DELAY_S,
    STAGES,
    CombinedReport,
    clean_run_problems,
    run_combined,
    write_patients,
)
from tests.reliability.course_runs import COURSE_SEED
from tests.reliability.hostile import HostileReport, run_hostile
from tests.reliability.hostile_peers import (
    AttackFigures,
    HostileCourseReport,
    course_bombs,
    run_hostile_course,
)
from tests.reliability.job_kills import (
    JobKillReport,
    compare_with_clean,
    resent,
    run_job_kills,
)
from tests.reliability.kills import KillReport, run_kills
from tests.reliability.load import LIMIT_REJECTION, LoadReport, run_load
from tests.reliability.outage import CourseRun, run_outage
from tests.service.nodes import make_settings
from theranode.dicomio.synthetic_course import CourseWriteSpec, write_course

DOC = ROOT / "docs" / "reliability.md"
SECTION_START = "<!-- section: hostile-peers -->"
SECTION_END = "<!-- /section -->"


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    hostile_objects: int
    load_senders: int
    load_per_sender: int
    kills: int
    kill_senders: int
    kill_per_sender: int
    course_cycles: int
    job_kills: int
    combined_patients: int
    combined_cycles: int
    combined_kills: int = 50
    peer_idle_sockets: int = 50
    peer_partial: int = 10
    peer_oversized: int = 10
    peer_idle_associations: int = 8
    peer_cycles: int = 2


FULL = Sizes(hostile_objects=1040, load_senders=8, load_per_sender=2500, kills=50,
             kill_senders=4, kill_per_sender=1500, course_cycles=4, job_kills=20,
             combined_patients=4, combined_cycles=4)
QUICK = Sizes(hostile_objects=520, load_senders=8, load_per_sender=150, kills=5,
              kill_senders=3, kill_per_sender=200, course_cycles=2, job_kills=5,
              combined_patients=3, combined_cycles=1, combined_kills=5,
              peer_idle_sockets=40, peer_partial=5, peer_oversized=5, peer_cycles=1)

#: Only reclaim_idle_after_s is lowered from the shipped 60 s: with every slot held by an
#: idle association, each bomb's association and the sender would otherwise wait a minute.
PEER_SECURITY = {"reclaim_idle_after_s": 10.0}
PEER_SETTLE_S = 5.0


@dataclass(frozen=True)
class JobRuns:
    """The course through a node with its destination down, and again under kills."""

    cycles: int
    outage: CourseRun
    kills: JobKillReport
    problems: list[str]


def run_jobs(work: Path, sizes: Sizes) -> JobRuns:
    """Outage run (the clean reference), then the kill run, compared with it."""
    spec = CourseWriteSpec(cycles=tuple(range(1, sizes.course_cycles + 1)))
    manifest = write_course(work / "course", spec, COURSE_SEED)
    outage = run_outage(work / "outage", manifest, sizes.course_cycles)
    problems = []
    produced = [o["sop_instance_uid"] for o in outage.objects]
    if [a.sop_instance_uid for a in outage.arrivals] != produced:
        problems.append("outage: the destination did not receive each object once, in order")
    kills = run_job_kills(work / "kills", manifest, sizes.course_cycles, sizes.job_kills, seed=50)
    problems += compare_with_clean(kills, outage, sizes.course_cycles)
    return JobRuns(sizes.course_cycles, outage, kills, problems)


@dataclass(frozen=True)
class CombinedRuns:
    """Several senders' courses through a node, without kills and with them."""

    clean: CombinedReport
    kills: CombinedReport
    problems: list[str]


def run_everything(work: Path, sizes: Sizes) -> CombinedRuns:
    """The combined scenario without kills (the clean run), then with kills, compared."""
    cycles = tuple(range(1, sizes.combined_cycles + 1))
    manifests = write_patients(work / "courses", sizes.combined_patients, cycles)
    clean = run_combined(work / "clean", manifests)
    kills = run_combined(work / "kills", manifests, kills=sizes.combined_kills, seed=50)
    problems = (clean_run_problems(clean) + kills.problems
                + combined_kills.compare_with_clean(kills, clean))
    missed = [phase for phase in STAGES if phase not in kills.phases]
    if missed:
        problems.append(f"no kill landed in: {', '.join(missed)}")
    return CombinedRuns(clean, kills, problems)


def run_hostile_peers(work: Path, sizes: Sizes) -> HostileCourseReport:
    """A course stored and computed under every hostile peer and bomb, at the shipped limits."""
    spec = CourseWriteSpec(cycles=tuple(range(1, sizes.peer_cycles + 1)))
    manifest = write_course(work / "course", spec, COURSE_SEED)
    cases, expected = course_bombs()
    report = run_hostile_course(
        work / "node", manifest, sizes.peer_cycles, cases, expected,
        idle_sockets=sizes.peer_idle_sockets, partial_requests=sizes.peer_partial,
        oversized_requests=sizes.peer_oversized,
        idle_associations=sizes.peer_idle_associations, settle_s=PEER_SETTLE_S,
        timeout_s=900.0,
        security=PEER_SECURITY)
    report.quiet = run_hostile_course(  # the peer to compare with: no attacker, no bomb
        work / "quiet", manifest, sizes.peer_cycles, [], {}, idle_sockets=0,
        partial_requests=0, oversized_requests=0, idle_associations=0, timeout_s=900.0,
        security=PEER_SECURITY)
    report.problems += [f"run without attackers: {p}" for p in report.quiet.problems]
    return report


@dataclass(frozen=True)
class PytestResult:
    """Outcome of running one reliability test module."""

    module: str
    passed: int
    failed: int
    skipped: int
    seconds: float
    tail: str


def run_module(module: str) -> PytestResult:
    """Run one test module with pytest and read its summary line."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", module],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr.strip()[-200:]
    counts = {word: int(number) for number, word in
              re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    if done.returncode not in (0, 5) and not failed:
        failed = 1
    return PytestResult(module, counts.get("passed", 0), failed, counts.get("skipped", 0),
                        time.monotonic() - started, summary)


def section_hostile(report: HostileReport) -> list[str]:
    families: dict[str, dict[str, int]] = {}
    for (family, _expect, status), count in report.statuses.items():
        families.setdefault(family, {})
        families[family][status] = families[family].get(status, 0) + count
    lines = [
        "## Hostile input",
        "",
        (f"{report.size} malformed or adversarial objects (`tests/reliability/corpus.py`, seeded) "
        f"sent over real associations in {report.seconds:.1f} s "
        f"({report.objects_per_s:.0f} objects/s); slowest answer {report.slowest_answer_s:.2f} s; "
        f"{report.quarantined} refused and kept in `quarantine/` with their reason."),
        "",
        "| family | objects | answers (status × count) |",
        "|---|---|---|",
    ]
    for family, statuses in sorted(families.items()):
        answers = ", ".join(f"{s}×{n}" for s, n in sorted(statuses.items()))
        lines.append(f"| {family} | {sum(statuses.values())} | {answers} |")
    lines += ["", _verdict(report.problems), ""]
    return lines


def section_load(report: LoadReport) -> list[str]:
    rejections = ", ".join(f"{n}× (result {r[0]}, source {r[1]}, reason {r[2]})"
                           for r, n in report.extra_peer_rejections.items()) or "none asked"
    return [
        "## Load",
        "",
        (f"{report.senders} dcmtk `storescu` associations in parallel, "
        f"{report.instances:,} CT instances (64×64, 16 bit, ~9 KB each):"),
        "",
        "| figure | value |",
        "|---|---|",
        f"| wall time | {report.seconds:.1f} s |",
        f"| throughput | {report.instances_per_s:.0f} instances/s |",
        f"| peak RSS of `theranode serve` (VmHWM) | {report.peak_rss_mb:.0f} MiB |",
        f"| indexed afterwards | {report.indexed:,} of {report.instances:,} |",
        f"| ninth peer while eight were connected | {rejections} |",
        "",
        (f"The expected rejection is A-ASSOCIATE-RJ {LIMIT_REJECTION}: rejected-transient, "
        "service-provider (presentation), local-limit-exceeded (PS3.8 Table 9-21)."),
        "",
        _verdict(report.problems),
        "",
    ]


def section_kills(report: KillReport, senders: int) -> list[str]:
    return [
        "## Crash safety",
        "",
        "| figure | value |",
        "|---|---|",
        f"| SIGKILLs of `theranode serve` | {report.kills} |",
        (f"| of which during a transfer (instances acknowledged in that round) | "
        f"{report.kills_mid_transfer} |"),
        f"| instances sent ({senders} parallel pynetdicom senders) | {report.instances:,} |",
        f"| acknowledged, then found indexed and archived whole | {report.acknowledged:,} |",
        (f"| resent after a kill and answered as identical duplicates | "
        f"{report.duplicates_after_restart} |"),
        f"| wall time | {report.seconds:.0f} s |",
        "",
        ("After every restart each acknowledged instance was checked: indexed, the "
        "archived bytes hash as indexed, the pixel data equals what was sent."),
        "",
        _verdict(report.problems),
        "",
    ]


def section_jobs(jobs: JobRuns) -> list[str]:
    outage, kills = jobs.outage, jobs.kills
    run = kills.run
    attempts = sum(j.attempts for j in run.jobs) if run else 0
    return [
        "## Jobs under kills, and a destination down for a whole course",
        "",
        (f"The synthetic course's {jobs.cycles} cycles (small grids; cycles 1-2 multi-time-point"
        f"{', the others single-time-point scaled from cycle 2' if jobs.cycles > 2 else ''}) "
        "and the course result, through `theranode serve` with one DICOM destination (a "
        "pynetdicom Storage SCP recording what arrives), first with the destination down until "
        "everything is computed (the clean run), then with SIGKILLs spread over the cycle jobs, "
        "the course job and the delivery."),
        "",
        "| figure | value |",
        "|---|---|",
        (f"| outage: result objects produced while the destination was down | "
        f"{outage.pending_while_down} |"),
        (f"| outage: failed delivery attempts (backoff 0.2 s doubling, at most 1 s) | "
        f"{outage.failed_attempts_while_down} |"),
        (f"| outage: objects received once it was up, each once, in production order | "
        f"{len(outage.arrivals)} |"),
        f"| outage: wall time | {outage.seconds:.0f} s |",
        f"| SIGKILLs during the course | {kills.kills} |",
        f"| of which while a job was running | {kills.kills_during_a_job} |",
        (f"| jobs / job starts (re-runs after kills) | {len(run.jobs) if run else 0} / "
        f"{attempts} |"),
        (f"| objects resent after a kill (same UID and bytes) | "
        f"{resent(run) if run else 0} |"),
        "",
        ("After the kills every job was checked done exactly once as version 1, each cycle's "
        "VOI mean doses equal to 1e-9 and RT Dose pixels byte-identical to the outage run's, "
        "the course totals equal, the same result objects (SOP Instance UIDs) produced and "
        "every one received, first arrivals in production order."),
        "",
        _verdict(jobs.problems),
        "",
    ]


def section_combined(runs: CombinedRuns) -> list[str]:
    clean, kills = runs.clean, runs.kills
    run = kills.run
    spread = kills.spread()
    objects = len(run.objects) if run else 0
    received = len({a.sop_instance_uid for a in run.arrivals}) if run else 0
    differences = combined_kills.compare_with_clean(kills, clean)
    identical = "yes" if run and not differences else f"**no** ({len(differences)} differences)"
    return [
        "## Everything at once: kills while senders store and jobs run",
        "",
        (f"{kills.patients} pynetdicom senders, one patient's synthetic {kills.cycles}-cycle "
        "course each (small grids), store in parallel into `theranode serve`, which computes "
        "every cycle and a course result after each and sends them to one DICOM destination "
        f"(a Storage SCP that answers each object after {PACS_ANSWER_DELAY_S:g} s). The run "
        "goes in waves, one per cycle number: two senders open a wave, the others start "
        "storing as soon as the first cycle of the wave is being computed, and the next wave "
        "begins when every result of the wave has been delivered (the weeks between cycles, "
        "compressed; so the jobs a run makes do not depend on timing). The same run without "
        "kills is the clean run. Each wave takes a share of the SIGKILLs in proportion to the "
        "instances it stores, aimed evenly at its four phases; a kill lands a seeded random "
        "delay after its phase is under way (at once when that phase is already over), and a "
        "sender whose association breaks reconnects and resends what was not acknowledged. The "
        "table counts the phase each kill actually hit."),
        "",
        "| figure | value |",
        "|---|---|",
        f"| SIGKILLs of `theranode serve` | {kills.kills} |",
        f"| hit while senders stored and no job ran | {spread.get(INGEST, 0)} |",
        f"| hit while senders stored and a job ran | {spread.get(INGEST_JOBS, 0)} |",
        f"| hit while a job ran and no sender stored | {spread.get(JOBS, 0)} |",
        f"| hit while only results were being delivered | {spread.get(DELIVERY, 0)} |",
        (f"| hit while nothing ran (a cycle waiting out its quiet period) | "
        f"{spread.get(IDLE, 0)} |"),
        f"| instances sent ({kills.patients} parallel senders) | {kills.instances:,} |",
        (f"| acknowledged / then found indexed and archived whole | {kills.acknowledged:,} / "
        f"{kills.indexed:,} |"),
        (f"| resent after a kill and answered as identical duplicates | "
        f"{kills.duplicates_after_restart} |"),
        (f"| jobs done / expected (the clean run's) | "
        f"{sum(j.state.value == 'done' for j in run.jobs) if run else 0} / "
        f"{len(clean.run.jobs) if clean.run else 0} |"),
        (f"| job starts (re-runs after kills) | "
        f"{sum(j.attempts for j in run.jobs) if run else 0} |"),
        f"| results identical to the clean run | {identical} |",
        (f"| result objects produced / received by the destination / resent after a kill | "
        f"{objects} / {received} / {resent(run) if run else 0} |"),
        (f"| wall time: clean run / run with kills | {clean.seconds:.0f} s / "
        f"{kills.seconds:.0f} s |"),
        "",
        ("After every restart, with the senders still storing, each instance a sender had seen "
        "acknowledged was checked indexed, its archived bytes hashing as indexed and its pixel "
        "data (an RTSTRUCT: its data set) equal to what was sent, and every indexed file was "
        "checked whole. At the end every job of the clean run was checked done exactly once, "
        "with the clean run's input fingerprint and result version and no other job; each "
        "cycle's VOI mean doses equal to 1e-9 and RT Dose pixels byte-identical to the clean "
        "run's, every course version's totals equal, each job's result objects the clean run's "
        "(SOP Instance UIDs), and every object received, first arrivals in production order, a "
        "resend only as the same bytes."),
        "",
        _verdict(runs.problems),
        "",
    ]


def _mib(value: float) -> str:
    return f"{value:+.1f} MiB"


def _compared(what: str, value: float | None, peer: float | None, form: str) -> str:
    """A table row: the figure under attack, without attackers, and their ratio."""
    shown = form.format(value) if value is not None else "not measured"
    if peer is None:
        return f"| {what} | {shown} | | |"
    ratio = f"{value / peer:.2f}" if value is not None and peer else ""
    return f"| {what} | {shown} | {form.format(peer)} | {ratio} |"


def _cpu_rate(attack: AttackFigures, settle_s: float) -> float:
    """Node CPU seconds per second of the stage, per object the attacker keeps open."""
    return (attack.after.cpu_s - attack.before.cpu_s) / settle_s / max(attack.count, 1)


def section_hostile_peers(report: HostileCourseReport, seconds: float,
                          settle_s: float = 5.0) -> list[str]:
    """The hostile-peer section, between its markers (``--only hostile-peers`` replaces it)."""
    base = report.baseline
    quiet = report.quiet
    end = report.end
    lines = [
        SECTION_START,
        "## Hostile peers: a course under idle, partial and oversized peers and bombs",
        "",
        (f"Measured on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()} "
        f"(`benchmarks/reliability.py --only hostile-peers`, {seconds / 60:.1f} min; "
        "the other sections of this document date from their own run, above)."),
        ("One `theranode serve` process with the shipped limits (max_associations 8, "
        "max_connections 32, acse_timeout_s 30, max_association_request_kb 128, "
        "max_inflated_mb 256, max_sequence_items 50,000, max_elements 500,000, "
        "max_contour_points 1,000,000, max_contours_per_roi 10,000) except "
        f"reclaim_idle_after_s {PEER_SECURITY['reclaim_idle_after_s']:g} (shipped 60). "
        "Node figures are those of the `theranode serve` process (jobs compute in child "
        "processes, whose CPU and memory are not in them), from `/proc/<pid>`: RSS "
        "(VmRSS), peak RSS (VmHWM), CPU (utime + stime), threads, and the TCP connections "
        "ESTABLISHED on its port (`/proc/net/tcp`: the kernel's count, so connections "
        "waiting in the accept queue or just refused are in it; max_connections bounds "
        "those the node holds)."),
        "",
        (f"Node at rest: RSS {base.rss_mb:.0f} MiB, {base.threads} threads, "
        f"{base.connections} connections." if base else "Node at rest: not measured."),
        "",
        "### Attacks, started one kind at a time (each held, and measured over its own stage)",
        "",
        ("| attack | attacker keeps open | opened in the stage | node's answer to one | "
        "closed after | RSS change | node CPU in the stage | per object opened | threads | "
        "connections |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report.attacks:
        closed = "still open" if a.closed_after_s is None else f"{a.closed_after_s:.1f} s"
        lines.append(
            f"| {a.kind} | {a.count} | {a.opened} | {a.answer} | {closed} | "
            f"{_mib(a.rss_delta_mb)} | {a.after.cpu_s - a.before.cpu_s:.2f} s | "
            f"{a.cpu_s_per_object * 1000:.1f} ms | "
            f"{a.after.threads} | {a.after.connections} |")
    lines += [
        "",
        (f"Each stage lasts {settle_s:g} s and adds its attack to those already held "
        "(threads and connections are the node's at the stage's end, all attacks so far "
        "included). A socket the node closes is reopened by its attacker within 0.5 s, so "
        "\"opened\" counts the node's closures too; the probe is one more object of the "
        "kind, opened at the stage's start, and an idle association the node keeps open shows "
        "\"still open\" (it gives its slot up to a sender after reclaim_idle_after_s). "
        "The idle associations' CPU includes their C-ECHOs. \"Opened\" below the count "
        "means the attacker's other connect() calls had not completed (or had timed out) by "
        "the stage's end."),
        "",
        *(f"- {a.kind}: node CPU {_cpu_rate(a, settle_s):.1%} of a core per object kept open, "
          "over the stage." for a in report.attacks),
        "",
        "### Bombs, each sent alone on its own association, all attacks held",
        "",
        ("| bomb | on the wire | status | Error Comment | answered in | node CPU | "
        "RSS change | peak RSS rise | node peak RSS after |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report.bombs:
        comment = b.comment.replace("|", "\\|") or "(stored)"
        ok = "" if b.status == b.expected_status else f" (documented 0x{b.expected_status:04X})"
        lines.append(
            f"| {b.name} | {b.wire_bytes / 2**20:.2f} MiB | 0x{b.status:04X}{ok} | {comment} | "
            f"{b.seconds:.2f} s | {b.cpu_s:.2f} s | {_mib(b.after.rss_mb - b.before.rss_mb)} | "
            f"{_mib(b.after.peak_rss_mb - b.before.peak_rss_mb)} | "
            f"{b.after.peak_rss_mb:.0f} MiB |")
    lines += [
        "",
        ("The Error Comment is a LO value (64 characters at most, PS3.5 6.2), so it is cut. "
        "RSS change is VmRSS after the answer minus before (memory an earlier bomb freed "
        "late shows as a fall); peak RSS rise is the VmHWM increase, the most the bomb "
        "made the node hold at once."),
    ]
    during = ", ".join(f"{name} 0x{status:04X}" for name, status in report.bombs_during_course)
    lines += [
        "",
        f"Sent again on another association while the course was stored: {during or 'none'}.",
        "",
        "### The legitimate sender's course",
        "",
        ("The same course was also sent to a fresh node with no attacker and no bomb (same "
        "settings), the peer the ratios compare with. Under attack the node's CPU and peak "
        "RSS include the attacks' and the bombs' own cost (the bombs are sent again while "
        "the course is stored; the idle associations' CPU per second is above)."),
        "",
        "| | under attack | no attacker | ratio |",
        "|---|---|---|---|",
        f"| course | {report.cycles} cycles, {report.course_instances} instances | | |",
        _compared("acknowledged", report.acknowledged, quiet and quiet.acknowledged, "{:.0f}"),
        _compared("waited for its first association", report.first_slot_s,
                  quiet and quiet.first_slot_s, "{:.1f} s"),
        _compared("whole course stored in", report.store_s, quiet and quiet.store_s, "{:.1f} s"),
        _compared("stored and computed (every cycle and the course job) in", report.computed_s,
                  quiet and quiet.computed_s, "{:.1f} s"),
        _compared("node process CPU from the first store to the course job done (the jobs "
                  "compute in child processes, not counted)", report.course_cpu_s,
                  quiet and quiet.course_cpu_s, "{:.1f} s"),
        _compared("node peak RSS (VmHWM) over the whole run", end.peak_rss_mb if end else None,
                  quiet and quiet.end and quiet.end.peak_rss_mb, "{:.0f} MiB"),
        f"| jobs | {'; '.join(report.jobs)} | {'; '.join(quiet.jobs) if quiet else ''} | |",
        f"| idle associations the node ended (slots given up) | "
        f"{report.idle_associations_reclaimed} | | |",
        _compared("node threads, most seen", report.threads_max, quiet and quiet.threads_max,
                  "{:.0f}"),
        _compared("node connections, most seen", report.connections_max,
                  quiet and quiet.connections_max, "{:.0f}"),
    ]
    lines += [
        "",
        ("Each acknowledged instance was checked indexed and archived whole (the archived "
        "bytes hash as indexed and its pixel data, an RTSTRUCT its data set, equal what was "
        "sent), every indexed file whole, every job done, and every bomb answered the status "
        "docs/conformance.md gives it (0xC102 past a limit; the 2,000-plane structure set is "
        "within every limit and stored)."),
        "",
        _verdict(report.problems),
        "",
        SECTION_END,
        "",
    ]
    return lines


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def replace_section(document: str, section: list[str]) -> str:
    """``document`` with its hostile-peer section replaced by ``section`` (appended before
    "Not covered" when it has none); the rest unchanged."""
    text = "\n".join(section).rstrip("\n") + "\n"
    start, end = document.find(SECTION_START), document.find(SECTION_END)
    if start >= 0 and end > start:
        return document[:start] + text + "\n" + document[end + len(SECTION_END):].lstrip("\n")
    anchor = document.find("## Not covered by this run")
    if anchor < 0:
        return document.rstrip("\n") + "\n\n" + text
    return document[:anchor] + text + "\n" + document[anchor:]


def section_modules(results: list[PytestResult]) -> list[str]:
    lines = ["## Disk full, access, and hostile input processed", "",
             "| test module | passed | failed | skipped | time |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| `{r.module}` | {r.passed} | {r.failed} | {r.skipped} | "
                     f"{r.seconds:.0f} s |")
    lines += [
        "",
        ("- `test_disk.py`: an 8 MiB tmpfs fills mid-transfer (min_free_disk_mb = 0, real "
        "ENOSPC): every failure is 0xA700, nothing corrupt is indexed, no staged file is left, "
        "and the refused instances are stored once the filesystem is grown with the node "
        "running; with min_free_disk_mb = 8 the node refuses before writing. (Where mounting "
        "is not permitted the test simulates ENOSPC and warns.)"),
        ("- `test_access.py`: dcmtk `storescu +tls` with a client certificate from the node's CA "
        "stores a whole course; no certificate, a certificate from another CA and plain TCP are "
        "refused; AE-title and host checks hold under TLS; the INFO log of `theranode serve` "
        "for the course names neither patient name nor Patient ID."),
        ("- `test_hostile_processing.py`: six patients each send a whole cycle spoiled for "
        "dosimetry next to a good patient: contours outside the image, SPECT counts all zero, "
        "SPECT scaled by 10³⁰ and CT numbers shifted by +30000 HU end failed with their reason "
        "in `theranode jobs`; Tc-99m SPECTs are ignored with the reason in `theranode status`; "
        "SPECTs in no CT's frame of reference are computed on their time point's CT with a "
        "warning in the result; the good patient's doses and RT Dose pixels equal the "
        "pipeline's for it alone."),
        "",
    ]
    return lines


NOT_COVERED = [
    "## Not covered by this run",
    "",
    ("- The outbox commits each delivery as its answer arrives; a kill between a destination's "
    "Success and that commit resends the one object (same UID and bytes, which a PACS files "
    "as the same instance). The runs above count these resends; none is prevented."),
    ("- In the combined run a patient's next cycle arrives only after the previous cycle's "
    "results were delivered. New data for a cycle already computed or being computed (a late "
    "scan, a corrected RTSTRUCT), which makes a new result version, is in no kill run; only "
    "the fingerprint rule behind it has unit tests (`tests/service/test_completion.py`, "
    "`tests/service/test_jobs.py`). The combined run's senders are pynetdicom SCUs with "
    "TCP_NODELAY in the benchmark's process, and its kills are aimed at phases, so their "
    "moments are not spread uniformly over the run's time."),
    ("- The hostile corpus is stored or refused; only the six spoiled whole cycles of "
    "`test_hostile_processing.py` run through the dosimetry pipeline."),
    ("- A SPECT with no CT in its frame of reference is computed on its time point's CT "
    "(`service/plan/completion.py` prefers, but does not require, the same frame), with a warning; "
    "it is not refused."),
    ("- Hostile peers (idle, partial and oversized association requests, idle associations, "
    "bombs) are covered by the hostile-peer section above, in plain TCP only: hostile peers "
    "over TLS (an idle socket, a denied host before the handshake) and an association "
    "stalled inside a P-DATA PDU are in the CI tests "
    "(`tests/reliability/test_hostile_peers.py`), not in a measured run."),
    ("- Throughput and memory are measured on the shared 2-core machine, with the senders "
    "on the same cores as the node."),
    "",
]


def _verdict(problems: list[str]) -> str:
    if not problems:
        return "**Result: no problem found.**"
    shown = "\n".join(f"  - {p}" for p in problems[:10])
    return f"**Result: {len(problems)} problem(s):**\n{shown}"


def render(sizes: Sizes, hostile: HostileReport, load: LoadReport, kills: KillReport,
           jobs: JobRuns, combined: CombinedRuns, modules: list[PytestResult],
           peers: HostileCourseReport, peers_seconds: float, seconds: float) -> str:
    header = [
        "# Reliability: faults, load and hostile input",
        "",
        ("Generated by `.venv/bin/python benchmarks/reliability.py` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}; "
        f"whole run {seconds / 60:.1f} min, loopback only). Do not edit by hand: rerun it."),
        ("The CI versions of these scenarios are `tests/reliability/` (same code, smaller sizes: "
        f"{QUICK.hostile_objects} hostile objects, {QUICK.load_senders}×"
        f"{QUICK.load_per_sender} instances, {QUICK.kills} kills; {QUICK.job_kills} kills "
        f"over a {QUICK.course_cycles}-cycle course; {QUICK.combined_kills} kills while "
        f"{QUICK.combined_patients} senders store one cycle each and it is computed)."),
        "",
        ("What is promised (docs/conformance.md section 4): Success only after the bytes are "
        "fsynced, renamed into the archive and indexed; 0xA700 when the disk is full; a "
        "0xC000-range failure with a reason and a quarantined copy for what cannot be filed; "
        "valid objects that cannot be used for Lu-177 dosimetry stored and flagged."),
        "",
        "## Found broken on the way, and fixed (each with the test that found it)",
        "",
        ("- An image object cut at an element boundary (so without Pixel Data), or whose pixel "
        "data was longer than Rows × Columns × frames, was stored as Success "
        "(`service/receive/ingest.py`; hostile corpus)."),
        ("- An instance of patient B carrying a Series Instance UID of patient A joined A's "
        "series (and would have entered A's dosimetry); now refused 0xC110 and quarantined "
        "(`service/receive/ingest.py`; hostile corpus, collision family)."),
        ("- A negative, zero, infinite or 10¹² MBq RadionuclideTotalDose was indexed as the "
        "administered activity; now dropped (`dicomio/headers.py`; hostile corpus)."),
        ("- A bare TCP connection (health check, port scan) held an association slot for the "
        "30 s ACSE timeout, so a few of them locked senders out with local-limit-exceeded "
        "(`service/receive/scp.py`; load test)."),
        ("- A series-UID collision answered 0xA700 instead of 0xC110 after a concurrent change of "
        "the quarantine call's signature (`service/receive/ingest.py`; hostile test)."),
        ("- A cycle whose SPECT was scaled by 10³⁰ was computed (10³⁰ Gy) and its results queued "
        "for the PACS, and a CT with a +30000 HU intercept gave doses a third of the truth, "
        "both as done jobs; the pipeline now refuses a SPECT holding no activity or more than "
        "100 GBq and a CT whose median is outside −1100…3100 HU, and warns when a SPECT is not "
        "in its CT's frame of reference (`service/jobs/pipeline.py`; hostile processing test)."),
        ("- A refused object was answered 0xA700 \"database is locked\" and its quarantined "
        "file left without an index row when the job store committed during the index's "
        "deferred transaction (SQLite refuses that lock upgrade at once); every store now "
        "begins its writes with BEGIN IMMEDIATE (`service/store/__init__.py`; full hostile "
        "run, then `tests/service/test_store_concurrency.py`)."),
        "",
    ]
    body = (section_hostile(hostile) + section_load(load) + section_kills(kills, sizes.kill_senders)
            + section_jobs(jobs) + section_combined(combined) + section_modules(modules)
            + section_hostile_peers(peers, peers_seconds, PEER_SETTLE_S) + NOT_COVERED)
    return "\n".join(header + body)


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI sizes (to try the command)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    parser.add_argument("--only", choices=["hostile-peers"],
                        help="measure this section alone and replace it in the doc")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.only == "hostile-peers":
        return only_hostile_peers(sizes, write=not args.no_write)
    storescu = shutil.which("storescu")
    if storescu is None:
        print("dcmtk storescu is needed (apt-get install dcmtk)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="theranode-reliability-") as scratch:
        work = Path(scratch)
        print(f"hostile input: {sizes.hostile_objects} objects …", flush=True)
        hostile = run_hostile(work / "hostile", make_settings(work / "hostile" / "data"),
                              size=sizes.hostile_objects, seed=177)
        print(f"  {hostile.size} objects, {len(hostile.problems)} problem(s)", flush=True)
        print(f"load: {sizes.load_senders} × {sizes.load_per_sender} …", flush=True)
        (work / "load").mkdir()
        load = run_load(work / "load", storescu, sizes.load_senders, sizes.load_per_sender)
        print(f"  {load.instances_per_s:.0f} instances/s, peak RSS {load.peak_rss_mb:.0f} MiB, "
              f"{len(load.problems)} problem(s)", flush=True)
        print(f"crash safety: {sizes.kills} SIGKILLs …", flush=True)
        (work / "kills").mkdir()
        kills = run_kills(work / "kills", sizes.kills, sizes.kill_senders,
                          sizes.kill_per_sender, seed=50)
        print(f"  {kills.acknowledged} acknowledged, {len(kills.problems)} problem(s)",
              flush=True)
        print(f"jobs: {sizes.course_cycles}-cycle course, outage then {sizes.job_kills} "
              "SIGKILLs …", flush=True)
        jobs = run_jobs(work / "jobs", sizes)
        print(f"  {len(jobs.problems)} problem(s)", flush=True)
        print(f"everything at once: {sizes.combined_patients} senders, "
              f"{sizes.combined_cycles} cycles, {sizes.combined_kills} SIGKILLs …", flush=True)
        combined = run_everything(work / "combined", sizes)
        print(f"  phases hit {combined.kills.spread()}, {len(combined.problems)} problem(s)",
              flush=True)
        peers_started = time.monotonic()
        peers = _hostile_peers_run(work / "peers", sizes)
        peers_seconds = time.monotonic() - peers_started
    modules = [run_module(m) for m in ("tests/reliability/test_disk.py",
                                       "tests/reliability/test_access.py",
                                       "tests/reliability/test_hostile_processing.py")]
    for module in modules:
        print(f"{module.module}: {module.tail}", flush=True)
    text = render(sizes, hostile, load, kills, jobs, combined, modules, peers, peers_seconds,
                  time.monotonic() - started)
    if args.no_write:
        print(text)
    else:
        DOC.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {DOC.relative_to(ROOT)}")
    failed = (hostile.problems or load.problems or kills.problems or jobs.problems
              or combined.problems or peers.problems or any(m.failed for m in modules))
    return 1 if failed else 0


def _hostile_peers_run(work: Path, sizes: Sizes) -> HostileCourseReport:
    print(f"hostile peers: {sizes.peer_idle_sockets} idle sockets, {sizes.peer_partial} partial "
          f"and {sizes.peer_oversized} oversized requests, {sizes.peer_idle_associations} idle "
          f"associations, bombs, a {sizes.peer_cycles}-cycle course …", flush=True)
    report = run_hostile_peers(work, sizes)
    print(f"  course stored in {report.store_s:.1f} s, computed in {report.computed_s:.1f} s, "
          f"{len(report.problems)} problem(s)", flush=True)
    return report


def only_hostile_peers(sizes: Sizes, write: bool) -> int:
    """Measure the hostile-peer section alone; replace it in the doc (the rest unchanged)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="theranode-reliability-") as scratch:
        report = _hostile_peers_run(Path(scratch), sizes)
    section = section_hostile_peers(report, time.monotonic() - started, PEER_SETTLE_S)
    if write:
        DOC.write_text(replace_section(DOC.read_text(encoding="utf-8"), section),
                       encoding="utf-8")
        print(f"wrote the hostile-peer section of {DOC.relative_to(ROOT)}")
    else:
        print("\n".join(section))
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
