"""Send the hostile corpus to a running node and check what it did with each object.

:func:`run_hostile` is shared by the CI test (``tests/reliability/test_hostile.py``)
and the full-size command (``benchmarks/reliability.py``). It stores an
innocent patient (the *victim*) first, sends every case of
:func:`~tests.reliability.corpus.hostile_corpus` over real associations
(re-associating whenever the node ends one), and returns a
:class:`HostileReport` whose ``problems`` list every broken promise: a case
answered otherwise than expected, a failure without a quarantined copy and
reason, a stored object without a valid index row, a file outside the data
folder, a change to the victim's instances or grouping, an answer slower
than the bound, or a node that stopped serving.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom.association import Association

from tests.reliability.corpus import (
    INJECTION,
    Expect,
    HostileCase,
    Victim,
    hostile_corpus,
    write_corpus,
)
from tests.service import factory
from tests.service.nodes import running_node, scu, send
from theranode.config.schema import Settings
from theranode.service.app import Node
from theranode.service.receive.archive import sha256_hex

#: Statuses a hostile object may be refused with (PS3.4 B.2.3; service/receive/ingest.py).
REFUSALS = frozenset({0xA900, 0xC100, 0xC101, 0xC110, 0xC120})
NO_ANSWER = -1
FLAG_STATES = frozenset({"held", "ungrouped", "ignored"})
#: What the node may create directly below its data folder.
DATA_ENTRIES = frozenset({"incoming", "archive", "conflicts", "quarantine", "results", "outbox",
                          "reports", "jobs", "cohort", "site-secret"})


@dataclass
class HostileReport:
    """What happened to the corpus."""

    size: int
    seconds: float = 0.0
    slowest_answer_s: float = 0.0
    statuses: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    quarantined: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def objects_per_s(self) -> float:
        return self.size / self.seconds if self.seconds else 0.0


def store_victim(node: Node) -> Victim:
    """An innocent patient's NM, CT and RTSTRUCT on one frame of reference, grouped."""
    frame, study = factory.generate_uid(), factory.generate_uid()
    nm = factory.nm("VICTIM", INJECTION, INJECTION + timedelta(hours=24), frame=frame, study=study)
    ct = factory.ct("VICTIM", INJECTION + timedelta(hours=24), frame=frame, study=study)
    rs = factory.rtstruct("VICTIM", INJECTION + timedelta(hours=24), referenced_frame=frame)
    statuses = send(node.port, [nm, ct, rs])
    if statuses != [0, 0, 0]:
        raise AssertionError(f"the victim patient was not stored: {statuses}")
    node.regrouper.wait_idle()
    return Victim("VICTIM", study, nm.SeriesInstanceUID, nm.SOPInstanceUID, frame)


def victim_state(node: Node) -> dict[str, Any]:
    """Everything of the victim that hostile input must leave untouched."""
    (key,) = [k for k in node.index.patient_keys() if node.index.patient_id(k) == "VICTIM"]
    series = node.index.series_of_patient(key)
    files = {}
    for row in series:
        for path in (node.archive.root / "archive" / key / row["study_uid"]
                     / row["series_uid"]).glob("*.dcm"):
            files[path.name] = sha256_hex(path.read_bytes())
    for row in series:
        row.pop("last_received", None)
    return {"series": series, "grouping": node.index.grouping_of_patient(key), "files": files}


def _tree(root: Path, skip: tuple[Path, ...]) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if not any(p == s or s in p.parents for s in skip)}


def _associate(port: int) -> Association:
    assoc = scu("HOSTILE").associate("127.0.0.1", port, ae_title="THERANODE")
    if not assoc.is_established:
        raise ConnectionError("the node refused the hostile sender's association")
    return assoc


def send_all(port: int, paths: list[Path]) -> Iterator[tuple[int, float]]:
    """(status, seconds) per file; a new association whenever the node ended one."""
    assoc = _associate(port)
    try:
        for path in paths:
            if not assoc.is_established:
                assoc = _associate(port)
            started = time.monotonic()
            try:
                answer = assoc.send_c_store(path)
                status = int(answer.Status) if "Status" in answer else NO_ANSWER
            except Exception:
                status = NO_ANSWER
            yield status, time.monotonic() - started
    finally:
        if assoc.is_established:
            assoc.release()


def _uids(case: HostileCase) -> tuple[str, str] | None:
    """(SOP Instance UID, Series Instance UID) of a case that is meant to be filed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(BytesIO(case.data))
        return str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)


class _Checker:
    """Compares the node's answer and index to each case's expectation."""

    def __init__(self, node: Node, report: HostileReport) -> None:
        self.node = node
        self.report = report
        self.grouping: dict[str, dict[str, Any]] = {}
        for key in node.index.patient_keys():
            for row in node.index.grouping_of_patient(key):
                self.grouping[row["series_uid"]] = row

    def problem(self, case: HostileCase, text: str) -> None:
        self.report.problems.append(f"{case.name} ({case.family}): {text}")

    def check(self, case: HostileCase, status: int) -> None:
        expect = case.expect
        if status == NO_ANSWER:
            return self.problem(case, "no answer (association dropped or timed out)")
        if status in REFUSALS and expect in (Expect.REJECTED, Expect.HANDLED):
            return None
        if status != 0x0000:
            return self.problem(case, f"answered 0x{status:04X}, expected {expect.value}")
        if expect is Expect.REJECTED:
            return self.problem(case, "stored, but it must be refused")
        if expect is Expect.HANDLED:
            return None  # stored as received: the index rows are checked as a whole
        sop_uid, series_uid = _uids(case)  # type: ignore[misc]
        if expect is Expect.CONFLICT:
            if not any(r["sop_instance_uid"] == sop_uid
                       for r in self.node.index.recent_conflicts(10_000)):
                self.problem(case, "a conflicting duplicate was not kept aside")
            return None
        if self.node.index.instance(sop_uid) is None:
            return self.problem(case, "answered Success but not indexed")
        placement = self.grouping.get(series_uid)
        if expect is Expect.FLAGGED and (
            placement is None or placement["state"] not in FLAG_STATES or not placement["note"]
        ):
            self.problem(case, f"stored but not flagged: grouping {placement}")
        if case.family == "absurd activity":
            self._check_activity(case, series_uid)
        return None

    def _check_activity(self, case: HostileCase, series_uid: str) -> None:
        for key in self.node.index.patient_keys():
            for row in self.node.index.series_of_patient(key):
                activity = row["injected_activity_mbq"]
                if row["series_uid"] == series_uid and activity is not None \
                        and not 0 < activity <= 100_000:
                    self.problem(case, f"implausible activity {activity} MBq indexed")


def _check_index(node: Node, report: HostileReport, refused: int) -> None:
    quarantine = node.index.recent_quarantine(1_000_000)
    report.quarantined = len(quarantine)
    if len(quarantine) != refused:
        report.problems.append(f"{refused} objects refused but {len(quarantine)} quarantined")
    for row in quarantine:
        if not row["reason"] or not (node.archive.root / row["path"]).is_file():
            report.problems.append(f"quarantine row {row['id']} lacks its reason or its file")
    for path in node.index.archived_paths():  # every indexed file re-parses to a valid header
        from theranode.dicomio.headers import instance_header

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                instance_header(dcmread(node.archive.root / path, stop_before_pixels=True),
                                node.keyer)
            except Exception as exc:
                report.problems.append(f"indexed file {path} does not parse: {exc!r}")


def run_hostile(work: Path, settings: Settings, size: int, seed: int = 177,
                max_answer_s: float = 10.0) -> HostileReport:
    """Store a victim, send ``size`` hostile cases, and report every broken promise."""
    data_dir = settings.data_dir
    report = HostileReport(size=0)
    with running_node(settings) as node:
        victim = store_victim(node)
        before = victim_state(node)
        cases = hostile_corpus(victim, size=size, seed=seed)
        report.size = len(cases)
        paths = write_corpus(cases, work / "corpus")
        outside_before = _tree(work, (data_dir, work / "corpus"))
        started = time.monotonic()
        statuses = []
        for status, seconds in send_all(node.port, paths):
            statuses.append(status)
            report.slowest_answer_s = max(report.slowest_answer_s, seconds)
        report.seconds = time.monotonic() - started
        node.regrouper.wait_idle(120)
        checker = _Checker(node, report)
        for case, status in zip(cases, statuses, strict=True):
            report.statuses[(case.family, case.expect.value, f"0x{max(status, 0):04X}")] += 1
            checker.check(case, status)
        _check_index(node, report, sum(1 for s in statuses if s in REFUSALS))
        if victim_state(node) != before:
            report.problems.append("the victim patient's series, grouping or files changed")
        if _tree(work, (data_dir, work / "corpus")) != outside_before:
            report.problems.append("files appeared outside the data folder")
        unexpected = {p.name for p in data_dir.iterdir()} - DATA_ENTRIES
        if any(not name.startswith("theranode.db") for name in unexpected):
            report.problems.append(f"unexpected entries in the data folder: {sorted(unexpected)}")
        if report.slowest_answer_s > max_answer_s:
            report.problems.append(f"slowest answer took {report.slowest_answer_s:.1f} s")
        fresh = factory.ct("AFTER", INJECTION, frame=factory.generate_uid())
        if send(node.port, [fresh]) != [0]:
            report.problems.append("the node no longer stores a valid object")
    return report
