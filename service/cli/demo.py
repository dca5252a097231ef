"""`theranode demo`: a synthetic course through a node, results against the truth.

``theranode demo`` needs no node and no configuration edit. In one folder
(``--work-dir``; by default a new temporary folder, printed) it

1. starts a Storage SCP (pynetdicom, AE title ``--ae-title``) on a free port to
   receive the results,
2. writes ``theranode.toml``: the configuration in effect (the shipped defaults,
   or ``--config``) with the node on a free loopback port, its data in
   ``node-data/``, the receiver as its only destination, the demo's AE title
   allowed to call, TLS off and a quiet period of
   :data:`~theranode.service.cli.demo_node.DEMO_QUIET_PERIOD_S`
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
   :data:`~theranode.service.cli.demo_node.NODE_STOP_TIMEOUT_S`) and the
   receiver, also on Ctrl-C or SIGTERM. The folder stays, with the received
   objects and the node's log.

The temporary node is :mod:`theranode.service.cli.demo_node`, the receiver
:mod:`theranode.service.cli.demo_receiver`.

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
import logging
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from theranode.config.schema import Settings
from theranode.config.writing import settings_toml
from theranode.dicomio.headers import SOP_CLASS_KINDS
from theranode.dicomio.pdf_report import plain_number
from theranode.dicomio.sr import GroupValues, read_sr_report
from theranode.dicomio.synthetic_course import (
    CourseManifest,
    CourseWriteSpec,
    PhantomGrids,
    write_course,
)
from theranode.service.cli.demo_node import (
    DEMO_CONFIG_COMMENT,
    TemporaryNode,
    answers_echo,
    demo_node_settings,
    free_port,
    stop_on_termination,
)
from theranode.service.cli.demo_receiver import Receiver, result_lines, wait_for_results
from theranode.service.cli.terminal_text import emit, terminal_text
from theranode.service.deliver.requestor import SenderAE
from theranode.service.errors import DemoError

logger = logging.getLogger(__name__)

DEMO_SEED = 2024
#: Port of the demo's receiver when it serves a running node (the destination entry's port).
DEFAULT_LISTEN_PORT = 11113


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
            # Announced only once ``node`` is bound: an interrupt while the line
            # is written still finds the node to stop in ``finally``.
            emit(f"Started a temporary node (pid {node.pid}, {node.ae_title} on "
                 f"127.0.0.1:{node.port}, configuration {node.config}, log {node.log})")
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
    config.write_text(settings_toml(node_settings, DEMO_CONFIG_COMMENT), encoding="utf-8")
    return TemporaryNode(config, work / "node.log", node_settings.node.port,
                         node_settings.node.ae_title)


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
