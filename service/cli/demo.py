"""`theranode demo`: a synthetic course through a node, results against the truth.

``theranode demo`` needs no node and no configuration edit. In one folder
(``--work-dir``; by default a new temporary folder, printed) it

1. starts a Storage SCP (pynetdicom, AE title ``--ae-title``) on a free port to
   receive the results,
2. writes ``theranode.toml``: the configuration in effect (the shipped defaults,
   or ``--config``) with the node on a free loopback port, its data in
   ``node-data/``, the receiver as its only destination, the demo's AE title
   allowed to call, TLS off and a quiet period of :data:`DEMO_QUIET_PERIOD_S`
   (the demo sends each cycle at once: no scanner is still sending),
3. starts a real node, ``python -m theranode serve --config theranode.toml``,
   in its own process group with its log in ``node.log``,
4. meanwhile writes the synthetic Lu-177 course
   (:func:`theranode.dicomio.synthetic_course.write_course`) with its analytic
   truth into ``course/``, and sends it by C-STORE once the node answers a C-ECHO,
5. waits until the RT Dose, SR and PDF of every cycle sent and of the course
   have come back into ``received/``,
6. prints each VOI's mean absorbed dose next to the analytic truth and the
   received files, and
7. stops the node (SIGTERM; SIGKILL to its process group after
   :data:`NODE_STOP_TIMEOUT_S`) and the receiver, also on Ctrl-C or SIGTERM.
   The folder stays, with the received objects and the node's log.

With ``--node HOST:PORT`` (or the older ``--port``/``--host``) the course goes
to a running node instead, which must list the demo as a ``[[destinations]]``
entry (``theranode demo --print-destination`` prints the entry to add).

The truth is exact for the continuous phantom; on the small grids (8 mm
SPECT voxels) partial volume lowers organ means by a few percent and lesion
means more (the lesion doses are recovery corrected with the configured RC
curve), which the printed differences show.

References
----------
DICOM PS3.4 A.4 (Verification SOP Class: the readiness check), B.2.3 (Storage
statuses); PS3.7 9.1.1 (C-STORE), 9.1.5 (C-ECHO).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from theranode.config.schema import LIST_SECTIONS, NESTED_TABLES, SECTIONS, Destination, Settings
from theranode.dicomio.errors import DicomInputError
from theranode.dicomio.headers import SOP_CLASS_KINDS, is_valid_uid
from theranode.dicomio.pdf_report import plain_number
from theranode.dicomio.sr import GroupValues, read_sr_report
from theranode.dicomio.synthetic_course import (
    CourseManifest,
    CourseWriteSpec,
    PhantomGrids,
    write_course,
)
from theranode.service.cli.terminal_text import emit, terminal_text
from theranode.service.deliver.requestor import SenderAE
from theranode.service.deliver.sender import (
    COMPREHENSIVE_3D_SR_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
    RESULT_SOP_CLASSES,
    RT_DOSE_STORAGE,
)
from theranode.service.errors import ServiceError
from theranode.service.receive.scp import VERIFICATION

logger = logging.getLogger(__name__)

DEMO_SEED = 2024
#: Received objects whose file name cannot be made from a valid UID and modality
#: (a "Cannot understand" failure, PS3.4 B.2.3).
CANNOT_FILE = 0xC110
#: Port of the demo's receiver when it serves a running node (the destination entry's port).
DEFAULT_LISTEN_PORT = 11113
#: The temporary node's quiet period (s): the demo sends each cycle in one go.
DEMO_QUIET_PERIOD_S = 2.0
#: The temporary node's planner interval (s).
DEMO_POLL_INTERVAL_S = 1.0
#: Longest wait for the temporary node to answer a C-ECHO after its start (s).
NODE_START_TIMEOUT_S = 90.0
#: Longest wait for the temporary node to stop after SIGTERM, before SIGKILL (s).
NODE_STOP_TIMEOUT_S = 30.0
#: Lines of ``node.log`` printed when the temporary node fails.
LOG_TAIL_LINES = 30
#: Names of the result objects, by SOP Class UID.
OBJECT_NAMES = {RT_DOSE_STORAGE: "RT Dose", COMPREHENSIVE_3D_SR_STORAGE: "SR",
                ENCAPSULATED_PDF_STORAGE: "PDF"}
#: The end of a result's Series Description: ``… cycle 2 v1``, ``… course v3``.
RESULT_LABEL = re.compile(r"(?P<label>cycle \d+|course) v(?P<version>\d+)$")


class DemoError(ServiceError):
    """The demo cannot go on (the message says why and what to do)."""


# -- the receiver -------------------------------------------------------------------
@dataclass(frozen=True)
class ReceivedFile:
    """One object the receiver stored."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    description: str

    @property
    def result(self) -> tuple[str, int] | None:
        """``("cycle 2", 1)`` or ``("course", 3)`` from the Series Description, if theranode's."""
        match = RESULT_LABEL.search(self.description)
        return None if match is None else (match["label"], int(match["version"]))


class Receiver:
    """Storage SCP collecting the results the node sends back.

    ``port`` 0 binds a free port; :attr:`port` is the one bound.
    """

    def __init__(self, ae_title: str, port: int, folder: Path, host: str = "0.0.0.0") -> None:
        self.folder = folder
        self.reports: list[Dataset] = []
        self.files: list[ReceivedFile] = []
        self.count = 0
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        for sop_class in RESULT_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, [ExplicitVRLittleEndian,
                                                      ImplicitVRLittleEndian])
        self.ae.add_supported_context(VERIFICATION)
        try:
            server = self.ae.start_server((host, port), block=False,
                                          evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise DemoError(f"The demo cannot receive on {host}:{port} ({exc.strerror}); "
                            "give another --listen-port.") from exc
        assert isinstance(server, ThreadedAssociationServer)  # block=False returns it
        self.server = server
        self.port = int(server.server_address[1])

    def _on_store(self, event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        modality, uid = str(ds.get("Modality", "")), str(ds.get("SOPInstanceUID", ""))
        if not (modality.isascii() and modality.isalnum() and is_valid_uid(uid)):
            return CANNOT_FILE  # the file name is built from these: no path from a peer
        path = self.folder / f"{modality}-{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sop_class = str(ds.get("SOPClassUID", ""))
        received = ReceivedFile(path, sop_class, uid, str(ds.get("SeriesDescription", "")))
        with self._lock:
            self.count += 1
            self.files.append(received)
            if sop_class == COMPREHENSIVE_3D_SR_STORAGE:
                self.reports.append(dcmread(path))
        return 0x0000

    def cycle_reports(self) -> dict[int, Dataset]:
        """Latest SR per cycle number (from its Series Description ``… cycle N vK``)."""
        found: dict[int, tuple[int, Dataset]] = {}
        with self._lock:
            reports = list(self.reports)
        for ds in reports:
            words = str(ds.get("SeriesDescription", "")).split()
            if "cycle" not in words:
                continue
            number = int(words[words.index("cycle") + 1])
            version = int(words[-1].lstrip("v"))
            if number not in found or found[number][0] < version:
                found[number] = (version, ds)
        return {n: ds for n, (_, ds) in found.items()}

    def received(self) -> list[ReceivedFile]:
        with self._lock:
            return list(self.files)

    def stop(self) -> None:
        self.server.shutdown()


# -- which results are in ------------------------------------------------------------
@dataclass(frozen=True)
class ResultFiles:
    """The received objects of one result (``cycle 2`` or ``course``) at one version."""

    label: str
    version: int
    #: ``"RT Dose"``, ``"SR"``, ``"PDF"`` → file.
    paths: dict[str, Path]

    @property
    def has_report(self) -> bool:
        """Its SR and PDF are in (the RT Dose is only made when there is a dose map)."""
        return {"SR", "PDF"} <= set(self.paths)


def result_files(received: list[ReceivedFile]) -> dict[tuple[str, int], ResultFiles]:
    """The received theranode results, by (label, version)."""
    grouped: dict[tuple[str, int], dict[str, Path]] = {}
    for item in received:
        name = OBJECT_NAMES.get(item.sop_class_uid)
        if item.result is not None and name is not None:
            grouped.setdefault(item.result, {})[name] = item.path
    return {key: ResultFiles(*key, paths) for key, paths in grouped.items()}


class CourseCoverage:
    """Which cycles each received course SR sums (read once per SR)."""

    def __init__(self) -> None:
        self._cycles: dict[Path, frozenset[int]] = {}

    def cycles(self, sr_path: Path) -> frozenset[int]:
        """The cycle numbers of the SR's per-cycle groups (none if it cannot be read)."""
        if sr_path not in self._cycles:
            try:
                points = {g.time_point for g in read_sr_report(dcmread(sr_path)).groups}
            except (DicomInputError, InvalidDicomError) as exc:
                logger.warning("Course report %s cannot be read: %s", sr_path, exc)
                points = set()
            self._cycles[sr_path] = frozenset(
                int(p.removeprefix("cycle ")) for p in points
                if p.startswith("cycle ") and p.removeprefix("cycle ").isdigit())
        return self._cycles[sr_path]


def wanted_results(results: dict[tuple[str, int], ResultFiles], cycles: set[int],
                   coverage: CourseCoverage) -> list[ResultFiles]:
    """Per cycle its latest result, and the latest course result summing all ``cycles``
    (else the latest course result): what the demo prints."""
    chosen = []
    for label in [*(f"cycle {n}" for n in sorted(cycles)), "course"]:
        versions = sorted((r for (lab, _), r in results.items() if lab == label),
                          key=lambda r: r.version, reverse=True)
        if label == "course":
            versions.sort(key=lambda r: not (r.has_report and cycles <= coverage.cycles(
                r.paths["SR"])))
        if versions:
            chosen.append(versions[0])
    return chosen


def results_complete(chosen: list[ResultFiles], cycles: set[int],
                     coverage: CourseCoverage) -> bool:
    """Every cycle and the course over all of them have their SR and PDF."""
    labels = {r.label for r in chosen if r.has_report}
    course = next((r for r in chosen if r.label == "course"), None)
    return ({f"cycle {n}" for n in cycles} <= labels and course is not None
            and course.has_report and cycles <= coverage.cycles(course.paths["SR"]))


def wait_for_results(receiver: Receiver, cycles: set[int], timeout_s: float,
                     node_alive: Callable[[], bool] = lambda: True,
                     ) -> tuple[list[ResultFiles], bool]:
    """Wait until :func:`results_complete` (or ``timeout_s``); the results to print and
    whether they are complete.

    Raises
    ------
    DemoError
        ``node_alive`` says the node has stopped.
    """
    coverage = CourseCoverage()
    deadline = time.monotonic() + timeout_s
    while True:
        chosen = wanted_results(result_files(receiver.received()), cycles, coverage)
        complete = results_complete(chosen, cycles, coverage)
        if complete or time.monotonic() >= deadline:
            return chosen, complete
        if not node_alive():
            raise DemoError("The temporary node stopped before its results came back.")
        time.sleep(1.0)


def result_lines(chosen: list[ResultFiles], folder: Path) -> list[str]:
    """The received files of each result, one per line."""
    lines = [f"\nResults received in {folder}:"]
    for result in chosen:
        heading = f"{result.label} v{result.version}"
        for name in ("RT Dose", "SR", "PDF"):
            if name in result.paths:
                lines.append(f"  {heading:<12} {name:<8} {result.paths[name]}")
                heading = ""
    return lines


# -- sending and comparing -----------------------------------------------------------
def destination_snippet(args: argparse.Namespace) -> str:
    """The ``[[destinations]]`` entry the node needs to send results to the demo."""
    return (
        "[[destinations]]\n"
        'name = "demo"\n'
        f'ae_title = "{args.ae_title}"\n'
        '# the machine running `theranode demo`, as the node sees it\n'
        'host = "127.0.0.1"\n'
        f"port = {args.listen_port or DEFAULT_LISTEN_PORT}\n"
    )


def send_course(manifest: CourseManifest, host: str, port: int, called_ae: str,
                calling_ae: str = "THERANODE-DEMO") -> int:
    """C-STORE every file of the course on one association; returns how many succeeded."""
    ae = SenderAE(ae_title=calling_ae)
    for sop_class in SOP_CLASS_KINDS:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise DemoError(
            f"No association with {called_ae} at {host}:{port}. Is the node running there "
            "(`./run serve` or `theranode serve`), with this AE title? Without --node, "
            "`theranode demo` starts a node of its own."
        )
    stored = 0
    try:
        for tp in manifest.time_points:
            files = [*tp.ct_files, *tp.spect_files, *([tp.rtstruct_file] if tp.rtstruct_file
                                                      else [])]
            for path in files:
                status = assoc.send_c_store(dcmread(path))
                stored += int("Status" in status and status.Status == 0x0000)
    finally:
        assoc.release()
    return stored


def comparison_lines(manifest: CourseManifest, reports: dict[int, Dataset]) -> list[str]:
    """VOI table per cycle: theranode's mean dose, the analytic truth, the difference.

    The SR's strings (series description, exclusion reasons) are escaped for the
    terminal (:mod:`theranode.service.cli.terminal_text`); the lines are printed with
    :func:`~theranode.service.cli.terminal_text.emit`.
    """
    lines = []
    truth_cycles = {c["number"]: c for c in manifest.truth["cycles"]}
    for number, ds in sorted(reports.items()):
        values = read_sr_report(ds)
        lines.append(f"\nCycle {number} ({terminal_text(ds.SeriesDescription)})")
        lines.append(f"  {'VOI':<20} {'theranode Gy':>17} {'truth Gy':>10} {'diff':>8}  note")
        truth = truth_cycles[number]["vois"]
        for name, entry in sorted(truth.items()):
            try:
                group = values.group(name, f"cycle {number}")
            except KeyError:
                lines.append(f"  {name:<20} {'-':>17} {entry['mean_dose_gy']:>10.3f}")
                continue
            found, expected = group.values["mean_gy"], entry["mean_dose_gy"]
            diff = 100.0 * (found / expected - 1.0) if expected else float("nan")
            lines.append(f"  {name:<20} {_with_uncertainty(group, found):>17} {expected:>10.3f} "
                         f"{diff:>+7.1f}%  " + terminal_text(_note(group.texts, group.values)))
    lines.append(
        "\nThe differences are partial volume, not error: on the demo's small grids a SPECT voxel "
        "is 8 mm,\nso VOI borders mix with their surroundings (organs read low, the thin L2-L4 "
        "marrow most).\nLesion doses are divided by the recovery coefficient of the configured "
        "RC curve, which\nassumes a real camera's blur that this noise-free phantom does not "
        "have. Use --size clinical\nfor 4.4 mm SPECT voxels, and measure your own RC curve. "
        "± is the EANM standard uncertainty\n(k = 1) each SR states; [dosimetry] "
        "partial_volume = \"gtm\" corrects organs too (docs/accuracy.md)."
    )
    return lines


def _with_uncertainty(group: GroupValues, dose_gy: float) -> str:
    """``1.23 ± 0.06`` with the report's standard uncertainty (k = 1), else the dose alone."""
    u = group.uncertainties.get("mean_gy")
    return f"{dose_gy:.3f}" if u is None else f"{plain_number(dose_gy)} ± {plain_number(u, 2)}"


def _note(texts: dict[str, list[str]], values: dict[str, float]) -> str:
    if texts.get("EXCLUDED"):
        return "excluded: " + "; ".join(texts["EXCLUDED"])
    rc = values.get("recovery_coefficient")
    return f"RC {rc:.2f}" if rc is not None and rc < 1.0 else ""


# -- the temporary node --------------------------------------------------------------
def free_port() -> int:
    """A TCP port on the loopback address that is free now (bound to port 0, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_node_settings(base: Settings, data_dir: Path, port: int, receiver_port: int,
                       demo_ae: str) -> Settings:
    """``base`` made into the demo's node: loopback port ``port``, data in ``data_dir``,
    the receiver its only destination, ``demo_ae`` allowed to call, no TLS (the demo
    talks plain DICOM on the loopback address), logs on standard error, a short quiet
    period; every other setting as in ``base``."""
    allowed = base.security.allowed_calling_ae_titles
    return dataclasses.replace(
        base,
        node=dataclasses.replace(base.node, bind="127.0.0.1", port=port,
                                 data_dir=str(data_dir)),
        security=dataclasses.replace(
            base.security, tls_cert="", tls_key="", tls_ca="",
            allowed_calling_ae_titles=allowed if demo_ae in allowed else [*allowed, demo_ae],
            allowed_hosts=[] if not base.security.allowed_hosts else
            [*base.security.allowed_hosts, "127.0.0.1"]),
        logging=dataclasses.replace(base.logging, file=""),
        protocol=dataclasses.replace(
            base.protocol, quiet_period_s=min(base.protocol.quiet_period_s, DEMO_QUIET_PERIOD_S)),
        jobs=dataclasses.replace(
            base.jobs, poll_interval_s=min(base.jobs.poll_interval_s, DEMO_POLL_INTERVAL_S)),
        destinations=[Destination(name="demo", ae_title=demo_ae, host="127.0.0.1",
                                  port=receiver_port)],
        source="theranode demo",
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):  # JSON's escapes are TOML's; DEL must be escaped in TOML
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_table(header: str, record: Any) -> Iterator[str]:
    yield header
    nested = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if (type(record), f.name) in NESTED_TABLES:
            nested.append((f.name, value))
        else:
            yield f"{f.name} = {_toml_value(value)}"
    name = header.strip("[]")
    for key, items in nested:
        for item in items:
            yield from _toml_table(f"[[{name}.{key}]]", item)


def settings_toml(settings: Settings) -> str:
    """``settings`` as a TOML document that :func:`~theranode.config.schema.load_settings`
    reads back to the same values."""
    lines = ["# written by `theranode demo` for its temporary node"]
    for section in SECTIONS:
        lines += ["", *_toml_table(f"[{section}]", getattr(settings, section))]
    for section in LIST_SECTIONS:
        for item in getattr(settings, section):
            lines += ["", *_toml_table(f"[[{section}]]", item)]
    return "\n".join(lines) + "\n"


def answers_echo(host: str, port: int, called_ae: str, calling_ae: str) -> bool:
    """Whether the node at ``host:port`` accepts an association and answers a C-ECHO."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    pynetdicom_log = logging.getLogger("pynetdicom")
    level = pynetdicom_log.level
    pynetdicom_log.setLevel(logging.CRITICAL)  # "connection refused" until a node listens
    try:
        assoc = ae.associate(host, port, ae_title=called_ae)
    finally:
        pynetdicom_log.setLevel(level)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and status.Status == 0x0000
    finally:
        assoc.release()


class TemporaryNode:
    """A ``theranode serve`` child process in its own process group.

    Its standard output and error go to ``log``.
    """

    def __init__(self, config: Path, log: Path, port: int, ae_title: str) -> None:
        self.config, self.log, self.port, self.ae_title = config, log, port, ae_title
        with open(log, "ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "theranode", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, calling_ae: str, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Return once the node answers a C-ECHO.

        Raises
        ------
        DemoError
            The node exited, or did not answer within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise DemoError(f"The temporary node exited at start-up (exit status "
                                f"{self.process.returncode}).")
            if self._echo(calling_ae):
                return
            time.sleep(0.25)
        raise DemoError(f"The temporary node did not answer a C-ECHO on 127.0.0.1:{self.port} "
                        f"within {timeout_s:g} s.")

    def _echo(self, calling_ae: str) -> bool:
        return answers_echo("127.0.0.1", self.port, self.ae_title, calling_ae)

    def stop(self, timeout_s: float = NODE_STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait (the node stops gracefully); SIGKILL its whole process group
        (workers included) after ``timeout_s``. Returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("The temporary node did not stop within %g s: killed", timeout_s)
        with contextlib.suppress(ProcessLookupError):  # workers left by a kill or a crash
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return [f"({self.log} cannot be read: {exc})"]
        return text.splitlines()[-lines:]


@contextlib.contextmanager
def stop_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does (through ``finally``: the node stops)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# -- the command ---------------------------------------------------------------------
def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The ``theranode demo`` command (see the module docstring)."""
    if args.print_destination:
        emit(destination_snippet(args))
        return 0
    work = _work_folder(args.work_dir)
    address = running_node_address(args, settings)
    if address is not None:
        return _demo_with_running_node(work, address, args.called_ae or settings.node.ae_title,
                                       args)
    return _demo_with_temporary_node(settings, work, args)


def running_node_address(args: argparse.Namespace, settings: Settings) -> tuple[str, int] | None:
    """``(host, port)`` of the running node ``--node``/``--host``/``--port`` name, if any."""
    if args.node is not None:
        host, port = args.node
        return str(host), int(port)
    if args.host is None and args.port is None:
        return None
    return args.host or "127.0.0.1", args.port or settings.node.port


def _work_folder(work_dir: Path | None) -> Path:
    if work_dir is None:
        work = Path(tempfile.mkdtemp(prefix="theranode-demo-"))
        emit(f"Working in {work} (a new temporary folder; it stays after the demo)")
        return work
    work = work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    return work


def _demo_with_running_node(work: Path, address: tuple[str, int], called: str,
                            args: argparse.Namespace) -> int:
    if not answers_echo(*address, called, args.ae_title):
        raise DemoError(
            f"No node answers a C-ECHO as {called} at {address[0]}:{address[1]}. Is it running "
            "there (`./run serve` or `theranode serve`), with this AE title (--called-ae), "
            f"and does it let {args.ae_title} call? Without --node, `theranode demo` starts a "
            "node of its own.")
    received_dir = _received_folder(work)
    receiver = Receiver(args.ae_title, args.listen_port or DEFAULT_LISTEN_PORT, received_dir)
    try:
        complete = _send_and_compare(work, receiver, address, called, args)
        if not complete:
            emit("\nIs the demo a destination of the node? Add this to its configuration:\n\n"
                 + destination_snippet(args) +
                 "\nand check `theranode status` / `theranode jobs` on the node.")
        return 0 if complete else 1
    finally:
        receiver.stop()


def _demo_with_temporary_node(settings: Settings, work: Path, args: argparse.Namespace) -> int:
    data_dir = work / "node-data"
    if data_dir.exists():
        raise DemoError(f"{data_dir} holds a node from an earlier demo, which would take the "
                        "course as already received. Give another --work-dir, or delete it.")
    receiver = Receiver(args.ae_title, args.listen_port or 0, _received_folder(work), "127.0.0.1")
    node: TemporaryNode | None = None
    try:
        with stop_on_termination():
            node = _start_node(settings, work, receiver.port, args.ae_title)
            complete = _send_and_compare(work, receiver, ("127.0.0.1", node.port),
                                         settings.node.ae_title, args, node)
            if not complete:
                _print_log_tail(node)
            return 0 if complete else 1
    except DemoError as exc:
        emit(f"theranode demo: {exc}", file=sys.stderr)
        if node is not None:
            _print_log_tail(node)
        return 1
    except KeyboardInterrupt:
        emit("\nInterrupted: stopping the temporary node.", file=sys.stderr)
        return 130
    finally:
        if node is not None:
            status = node.stop()
            emit(f"Temporary node stopped (exit status {status}); its log: {node.log}")
        receiver.stop()


def _start_node(settings: Settings, work: Path, receiver_port: int,
                demo_ae: str) -> TemporaryNode:
    """Write the node's configuration and start it (:meth:`TemporaryNode.wait_ready` waits)."""
    node_settings = demo_node_settings(settings, work / "node-data", free_port(), receiver_port,
                                       demo_ae)
    config = work / "theranode.toml"
    config.write_text(settings_toml(node_settings), encoding="utf-8")
    node = TemporaryNode(config, work / "node.log", node_settings.node.port,
                         node_settings.node.ae_title)
    emit(f"Started a temporary node (pid {node.pid}, {node_settings.node.ae_title} on "
         f"127.0.0.1:{node.port}, configuration {config}, log {node.log})")
    return node


def _print_log_tail(node: TemporaryNode) -> None:
    emit(f"\nLast lines of the node's log ({node.log}):", file=sys.stderr)
    for line in node.log_tail():
        emit(f"  {line}", file=sys.stderr)


def _received_folder(work: Path) -> Path:
    folder = work / "received"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_course(work: Path, args: argparse.Namespace) -> CourseManifest:
    grids = PhantomGrids.small() if args.size == "small" else PhantomGrids.clinical()
    emit(f"Writing the synthetic course (cycles {args.cycles}, {args.size} grids) to "
         f"{work / 'course'} …")
    return write_course(work / "course",
                        CourseWriteSpec(grids=grids, cycles=tuple(args.cycles)), DEMO_SEED)


def _write_course_meanwhile(work: Path, args: argparse.Namespace
                            ) -> Callable[[], CourseManifest]:
    """Start writing the course on a daemon thread (a node that fails to start ends the
    demo at once); the function returned waits for it."""
    outcome: list[CourseManifest | Exception] = []

    def write() -> None:
        try:
            outcome.append(_write_course(work, args))
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=write, name="demo-course", daemon=True)
    thread.start()

    def manifest() -> CourseManifest:
        thread.join()
        if not outcome:
            raise DemoError("Writing the synthetic course stopped without a result.")
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    return manifest


def _send_and_compare(work: Path, receiver: Receiver, address: tuple[str, int], called: str,
                      args: argparse.Namespace, node: TemporaryNode | None = None) -> bool:
    """Write the course (while ``node``, if given, starts), send it, wait for the results
    and print them; True when every result came back."""
    cycles = set(args.cycles)
    written = _write_course_meanwhile(work, args)
    if node is not None:
        emit("Waiting for the node to answer a C-ECHO …")
        node.wait_ready(args.ae_title)
    manifest = written()
    host, port = address
    emit(f"Sending it to {called} at {host}:{port} …")
    stored = send_course(manifest, host, port, called, args.ae_title)
    emit(f"{stored} instances stored. Waiting for the results on port {receiver.port} "
         f"(AE {args.ae_title}); the node computes after its quiet period …")
    chosen, complete = wait_for_results(receiver, cycles, args.timeout,
                                        node.alive if node is not None else lambda: True)
    for line in comparison_lines(manifest, receiver.cycle_reports()):
        emit(line)
    emit(*result_lines(chosen, receiver.folder))
    if complete:
        return True
    missing = sorted(({f"cycle {n}" for n in cycles} | {"course"})
                     - {r.label for r in chosen if r.has_report})
    emit(f"\nNot every result came back within {args.timeout:g} s "
         f"(missing or incomplete: {', '.join(missing) or 'the course over every cycle'}).")
    return False
