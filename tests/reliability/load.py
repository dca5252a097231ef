"""Load: parallel associations into one ``theranode serve``, throughput and memory.

:func:`run_load` writes ``senders × per_sender`` small CT instances (one
patient and series per sender), starts the node as a real process with
``max_associations = senders``, lets that many dcmtk ``storescu`` processes
send at once while a further peer keeps asking for an association, and then
checks every instance is archived (bytes hash as indexed) and indexed. It is
shared by the CI test and ``benchmarks/reliability.py`` (20,000 instances).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pynetdicom.sop_class import Verification

from tests.reliability.processes import start_node, write_config
from tests.service import factory
from theranode.service.deliver.requestor import SenderAE
from theranode.service.receive.archive import sha256_hex
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

ACQUIRED = datetime(2024, 5, 7, 9, 15)
#: A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation), local-limit-exceeded
#: (PS3.8 9.3.4, Table 9-21).
LIMIT_REJECTION = (0x02, 0x03, 0x02)


@dataclass
class LoadReport:
    """What a load run measured."""

    senders: int
    instances: int
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    indexed: int = 0
    extra_peer_rejections: dict[tuple[int, int, int], int] = field(default_factory=dict)
    extra_peer_accepted: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


def write_load(folder: Path, senders: int, per_sender: int, size: int = 64) -> dict[str, Path]:
    """Write the instances (``size``² 16-bit CT slices); returns SOP Instance UID → file."""
    rng = np.random.default_rng(20)
    files: dict[str, Path] = {}
    for sender in range(senders):
        directory = folder / f"sender{sender}"
        directory.mkdir(parents=True, exist_ok=True)
        study, series, frame = (factory.generate_uid() for _ in range(3))
        for i in range(per_sender):
            ds = factory.ct(f"LOAD{sender}", ACQUIRED + timedelta(seconds=i), frame=frame,
                            study=study, series=series)
            ds.Rows = ds.Columns = size
            ds.PixelData = rng.integers(0, 4096, size * size, dtype=np.uint16).tobytes()
            path = directory / f"{i:06d}.dcm"
            path.write_bytes(factory.encode(ds))
            files[str(ds.SOPInstanceUID)] = path
    return files


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def probe_association(port: int) -> tuple[int, int, int] | None:
    """Ask for one more association: None when accepted, else the A-ASSOCIATE-RJ fields."""
    ae = SenderAE(ae_title="EXTRAPEER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="THERANODE")
    if assoc.is_established:
        assoc.release()
        return None
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return int(primitive.result), int(primitive.result_source), int(primitive.diagnostic)
    return (-1, -1, -1)


def _senders_connected(log: Path, senders: int) -> bool:
    """True while every sender holds its association (read from the node's own log)."""
    text = log.read_text(errors="replace")
    accepted = text.count("Association accepted from LOAD")
    closed = text.count("Association released by LOAD") + text.count("Association aborted by LOAD")
    return accepted >= senders and accepted - closed == senders


def _probe_while(port: int, log: Path, senders: int, running: threading.Event,
                 report: LoadReport) -> None:
    """Ask for one association more than the limit whenever all senders hold theirs."""
    while running.is_set():
        if _senders_connected(log, senders):
            answer = probe_association(port)
            if answer is None:
                report.extra_peer_accepted += 1  # a sender finished meanwhile
            else:
                report.extra_peer_rejections[answer] = (
                    report.extra_peer_rejections.get(answer, 0) + 1)
        time.sleep(0.05)


def _storescu(storescu: str, port: int, sender: int, folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [storescu, "-aet", f"LOAD{sender}", "-aec", "THERANODE", "+sd", "+r", "-xe",
         "127.0.0.1", str(port), str(folder / f"sender{sender}")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, TCP_NODELAY="1"),
    )


def verify_archive(data_dir: Path, files: dict[str, Path], report: LoadReport) -> None:
    """Every instance indexed, its archived bytes hashing as indexed, and pixels intact."""
    index = IndexStore(open_database(data_dir / "theranode.db"))
    report.indexed = index.counts()["instances"]
    for uid, source in files.items():
        row = index.instance(uid)
        if row is None:
            report.problems.append(f"{uid} not indexed")
            continue
        stored = (data_dir / row["path"]).read_bytes()
        if sha256_hex(stored) != row["sha256"] or not stored.endswith(source.read_bytes()[-512:]):
            report.problems.append(f"{uid}: archived bytes differ from the index or the source")


def run_load(work: Path, storescu: str, senders: int = 8, per_sender: int = 150,
             extra_peer: bool = True) -> LoadReport:
    """Send ``senders × per_sender`` instances on ``senders`` parallel associations."""
    files = write_load(work / "load", senders, per_sender)
    data_dir = work / "data"
    config = work / "node.toml"
    port = write_config(config, data_dir, security={"max_associations": senders})
    report = LoadReport(senders=senders, instances=len(files))
    node = start_node(config, port)
    running = threading.Event()
    try:
        started = time.monotonic()
        processes = [_storescu(storescu, port, s, work / "load") for s in range(senders)]
        running.set()
        prober = threading.Thread(target=_probe_while,
                                  args=(port, node.log, senders, running, report))
        if extra_peer:
            prober.start()
        for sender, process in enumerate(processes):
            output, _ = process.communicate(timeout=3600)
            if process.returncode != 0:
                report.problems.append(f"storescu {sender} exited {process.returncode}: "
                                       f"{output[-400:]}")
        report.seconds = time.monotonic() - started
        running.clear()
        if extra_peer:
            prober.join()
        report.peak_rss_mb = peak_rss_mb(node.process.pid)
    finally:
        running.clear()
        if node.stop() != 0:
            report.problems.append("the node did not stop cleanly")
    verify_archive(data_dir, files, report)
    for answer in report.extra_peer_rejections:
        if answer != LIMIT_REJECTION:
            report.problems.append(f"an extra peer was refused with {answer}, not "
                                   f"{LIMIT_REJECTION} (transient, local limit exceeded)")
    return report
