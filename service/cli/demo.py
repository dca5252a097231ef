"""`theranode demo`: a synthetic course through a running node, results against the truth.

The demo

1. starts a Storage SCP (pynetdicom) on ``--listen-port`` with AE title
   ``--ae-title``, which must be a ``[[destinations]]`` entry of the node
   (``theranode demo --print-destination`` prints the entry to add),
2. writes the synthetic Lu-177 course (:func:`theranode.dicomio.synthetic_course.write_course`)
   with its analytic truth into ``--work-dir``,
3. sends it to the node by C-STORE,
4. waits until the SR dose report of every cycle sent has come back, and
5. prints each VOI's mean absorbed dose next to the analytic truth.

The truth is exact for the continuous phantom; on the small grids (8 mm
SPECT voxels) partial volume lowers organ means by a few percent and lesion
means more (the lesion doses are recovery corrected with the configured RC
curve), which the printed differences show.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from theranode.config.schema import Settings
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
from theranode.service.deliver.sender import RESULT_SOP_CLASSES
from theranode.service.receive.scp import VERIFICATION

DEMO_SEED = 2024
#: Received objects whose file name cannot be made from a valid UID and modality
#: (a "Cannot understand" failure, PS3.4 B.2.3).
CANNOT_FILE = 0xC110


def destination_snippet(args: argparse.Namespace) -> str:
    """The ``[[destinations]]`` entry the node needs to send results to the demo."""
    return (
        "[[destinations]]\n"
        'name = "demo"\n'
        f'ae_title = "{args.ae_title}"\n'
        '# the machine running `theranode demo`, as the node sees it\n'
        'host = "127.0.0.1"\n'
        f"port = {args.listen_port}\n"
    )


class Receiver:
    """Storage SCP collecting the results the node sends back."""

    def __init__(self, ae_title: str, port: int, folder: Path) -> None:
        self.folder = folder
        self.reports: list[Dataset] = []
        self.count = 0
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        for sop_class in RESULT_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, [ExplicitVRLittleEndian,
                                                      ImplicitVRLittleEndian])
        self.ae.add_supported_context(VERIFICATION)
        server = self.ae.start_server(("0.0.0.0", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        assert isinstance(server, ThreadedAssociationServer)  # block=False returns it
        self.server = server

    def _on_store(self, event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        modality, uid = str(ds.get("Modality", "")), str(ds.get("SOPInstanceUID", ""))
        if not (modality.isascii() and modality.isalnum() and is_valid_uid(uid)):
            return CANNOT_FILE  # the file name is built from these: no path from a peer
        path = self.folder / f"{modality}-{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.count += 1
            if ds.Modality == "SR":
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

    def stop(self) -> None:
        self.server.shutdown()


def send_course(manifest: CourseManifest, host: str, port: int, called_ae: str) -> int:
    """C-STORE every file of the course on one association; returns how many succeeded."""
    ae = SenderAE(ae_title="THERANODE-DEMO")
    for sop_class in SOP_CLASS_KINDS:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(
            f"No association with {called_ae} at {host}:{port}; start the node first "
            "(`./run serve` or `theranode serve`)."
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


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The ``theranode demo`` command (see the module docstring)."""
    if args.print_destination:
        emit(destination_snippet(args))
        return 0
    host, port = args.host, args.port or settings.node.port
    called = args.called_ae or settings.node.ae_title
    work = Path(args.work_dir).resolve()
    received_dir = work / "received"
    received_dir.mkdir(parents=True, exist_ok=True)
    receiver = Receiver(args.ae_title, args.listen_port, received_dir)
    try:
        grids = PhantomGrids.small() if args.size == "small" else PhantomGrids.clinical()
        emit(f"Writing the synthetic course (cycles {args.cycles}, {args.size} grids) to "
             f"{work / 'course'} …")
        manifest = write_course(work / "course",
                                CourseWriteSpec(grids=grids, cycles=tuple(args.cycles)), DEMO_SEED)
        emit(f"Sending it to {called} at {host}:{port} …")
        stored = send_course(manifest, host, port, called)
        emit(f"{stored} instances stored. Waiting for the results on port {args.listen_port} "
             f"(AE {args.ae_title}); the node computes after its quiet period …")
        reports = wait_for_reports(receiver, set(args.cycles), args.timeout)
        missing = set(args.cycles) - set(reports)
        for line in comparison_lines(manifest, reports):
            emit(line)
        emit(f"\n{receiver.count} result object(s) received in {received_dir}")
        if missing:
            emit(f"\nNo SR came back for cycle(s) {sorted(missing)} within {args.timeout:g} s. "
                 "Is the demo a destination of the node? Add this to its configuration:\n\n"
                 + destination_snippet(args) +
                 "\nand check `theranode status` / `theranode jobs` on the node.")
            return 1
        return 0
    finally:
        receiver.stop()


def wait_for_reports(receiver: Receiver, cycles: set[int], timeout_s: float) -> dict[int, Dataset]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reports = receiver.cycle_reports()
        if cycles <= set(reports):
            return reports
        time.sleep(1.0)
    return receiver.cycle_reports()
