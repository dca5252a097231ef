"""The demo's receiver: a Storage SCP that files the results a node sends back.

It accepts the result SOP classes a node sends (RT Dose, SR, Encapsulated
PDF, the optional dose-registry SR), files each instance under its folder by
a name made from its Modality and SOP Instance UID, and sorts what came back
by result (``cycle N vK`` / ``course vK``) so the demo knows when every
result it waits for is complete.

References
----------
DICOM PS3.4 B.2.3 (Storage statuses); PS3.7 9.1.1 (C-STORE).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from theranode.dicomio.errors import DicomInputError
from theranode.dicomio.headers import is_valid_uid
from theranode.dicomio.sr import read_sr_report
from theranode.service.deliver.sender import (
    COMPREHENSIVE_3D_SR_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
    RESULT_SOP_CLASSES,
    RT_DOSE_STORAGE,
)
from theranode.service.errors import DemoError
from theranode.service.receive.scp import VERIFICATION

logger = logging.getLogger(__name__)

#: Received objects whose file name cannot be made from a valid UID and modality
#: (a "Cannot understand" failure, PS3.4 B.2.3).
CANNOT_FILE = 0xC110
#: Names of the result objects, by SOP Class UID.
OBJECT_NAMES = {RT_DOSE_STORAGE: "RT Dose", COMPREHENSIVE_3D_SR_STORAGE: "SR",
                ENCAPSULATED_PDF_STORAGE: "PDF"}
#: The end of a result's Series Description: ``… cycle 2 v1``, ``… course v3``.
RESULT_LABEL = re.compile(r"(?P<label>cycle \d+|course) v(?P<version>\d+)$")


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
