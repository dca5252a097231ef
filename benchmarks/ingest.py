"""Ingest rate: theranode vs dcmtk storescp vs Orthanc, measured in one run.

Sends the same ~300 CT (512×512, 0.5 MB each) + NM instances over loopback on
one association with dcmtk ``storescu`` (TCP_NODELAY=1, see
docs/interoperability.md) to each receiver and prints instances/s and theranode's ratio to
each. Target on a 2-core machine: ≥ 250 instances/s and ≥ Orthanc's rate.

Receivers:

- theranode ``serve`` (fsync + atomic rename + SQLite commit per instance);
- dcmtk ``storescp`` with TCP_NODELAY=1 (writes files, no fsync);
- Orthanc with TCP_NODELAY=1 and ``SyncStorageArea`` (fsync);
- a bare pynetdicom Storage SCP whose handler only writes, fsyncs and renames
  each instance, set up as theranode's (TCP_NODELAY, the reactor polls of
  :mod:`theranode.service.receive.polling`, no standard event-logging handlers), i.e. the floor
  of any durable pynetdicom receiver on this disk, and the same SCP with a
  handler that stores nothing (pynetdicom's own ceiling).

Run: ``.venv/bin/python benchmarks/ingest.py [--instances 300] [--repeat 2]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers import free_port, run_orthanc, wait_for_port
from theranode.service.receive import polling


def write_instances(folder: Path, n_ct: int, seed: int = 0) -> int:
    """``n_ct`` CT slices of 512×512 int16 plus one 64-frame NM; returns the count."""
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    when = datetime(2024, 5, 6, 10, 0)
    for i in range(n_ct):
        ds = _base("1.2.840.10008.5.1.4.1.1.2", "CT", study, series, when)
        ds.FrameOfReferenceUID = frame
        ds.ImagePositionPatient = ["-250", "-250", f"{i * 2.5:.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.977", "0.977"]
        ds.SliceThickness = "2.5"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        _pixels(ds, rng.integers(0, 2000, (512, 512), dtype=np.int16), signed=True)
        ds.save_as(folder / f"CT_{i:04d}.dcm", enforce_file_format=True)
    nm = _base("1.2.840.10008.5.1.4.1.1.20", "NM", study, generate_uid(), when)
    nm.FrameOfReferenceUID = frame
    item = Dataset()
    item.RadiopharmaceuticalStartDateTime = "20240505100000"
    item.RadiopharmaceuticalStartTime = "100000"
    item.RadionuclideTotalDose = "7400"
    nm.RadiopharmaceuticalInformationSequence = [item]
    nm.NumberOfFrames = 64
    _pixels(nm, rng.integers(0, 500, (64, 128, 128), dtype=np.uint16), signed=False)
    nm.save_as(folder / "NM.dcm", enforce_file_format=True)
    return n_ct + 1


def _base(sop_class: str, modality: str, study: str, series: str, when: datetime) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "BENCH-001"
    ds.PatientName = "Bench^Mark"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = modality
    ds.StudyDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.AcquisitionTime = when.strftime("%H%M%S")
    return ds


def _pixels(ds: Dataset, array: np.ndarray, signed: bool) -> None:
    ds.Rows, ds.Columns = array.shape[-2:]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = array.tobytes()


def storescu_rate(folder: Path, port: int, called: str, n: int) -> float:
    """Instances/s for one storescu association sending every file of ``folder``."""
    start = time.perf_counter()
    done = subprocess.run(
        ["storescu", "-aet", "BENCH", "-aec", called, "+sd", "+sp", "*.dcm",
         "127.0.0.1", str(port), str(folder)],
        check=False, capture_output=True, text=True, env=dict(os.environ, TCP_NODELAY="1"),
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {done.stderr[-2000:]}")
    return n / elapsed


def measure_theranode(folder: Path, n: int, work: Path) -> float:
    port = free_port()
    config = work / "theranode.toml"
    config.write_text(
        f'[node]\nbind = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "theranode"}"\n'
        '[security]\nmin_free_disk_mb = 0\n[logging]\nlevel = "WARNING"\n'
    )
    node = subprocess.Popen([sys.executable, "-m", "theranode", "serve", "--config",
                             str(config)], cwd=ROOT)
    try:
        wait_for_port(port, 60)
        return storescu_rate(folder, port, "THERANODE", n)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)


def measure_storescp(folder: Path, n: int, work: Path) -> float:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    scp = subprocess.Popen(["storescp", "-od", str(out), "-aet", "STORESCP", str(port)],
                           env=dict(os.environ, TCP_NODELAY="1"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 30)
        return storescu_rate(folder, port, "STORESCP", n)
    finally:
        scp.terminate()
        scp.wait(timeout=30)


def measure_orthanc(folder: Path, n: int, work: Path) -> float:
    with run_orthanc(work / "orthanc") as orthanc:
        return storescu_rate(folder, orthanc.dicom_port, orthanc.aet, n)


def _bare_pynetdicom(folder: Path, n: int, work: Path, durable: bool) -> float:
    import socket

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt

    out = work / "bare"
    out.mkdir()

    def on_store(event):  # type: ignore[no-untyped-def]
        polling.mark_busy(event.assoc)
        data = event.encoded_dataset()
        if durable:
            target = out / f"{event.request.AffectedSOPInstanceUID}.dcm"
            temporary = target.with_suffix(".tmp")
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            directory = os.open(out, os.O_RDONLY)
            os.fsync(directory)
            os.close(directory)
        return 0x0000

    def on_open(event):  # type: ignore[no-untyped-def]
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        polling.mark_busy(event.assoc)  # the reactor polls theranode's SCP uses

    polling.install()
    _config.LOG_HANDLER_LEVEL = "none"  # as theranode's serve (service/logs.py)
    ae = AE("BARE")
    ae.maximum_pdu_size = 1024 * 1024
    for sop_class in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.20"):
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store),
                                           (evt.EVT_CONN_OPEN, on_open)])
    try:
        return storescu_rate(folder, port, "BARE", n)
    finally:
        server.shutdown()


def measure_bare_durable(folder: Path, n: int, work: Path) -> float:
    return _bare_pynetdicom(folder, n, work, durable=True)


def measure_bare_noop(folder: Path, n: int, work: Path) -> float:
    return _bare_pynetdicom(folder, n, work, durable=False)


RECEIVERS = {
    "theranode": ("theranode", measure_theranode),
    "storescp": ("dcmtk storescp", measure_storescp),
    "orthanc": ("Orthanc", measure_orthanc),
    "durable": ("pynetdicom, durable write only", measure_bare_durable),
    "noop": ("pynetdicom, no-op handler", measure_bare_noop),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300, help="CT instances to send")
    parser.add_argument("--repeat", type=int, default=2, help="runs per receiver (best kept)")
    parser.add_argument("--receivers", nargs="+", choices=sorted(RECEIVERS), default=None,
                        help="measure only these (default: all)")
    args = parser.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install Debian's dcmtk")
    with tempfile.TemporaryDirectory(prefix="theranode-bench-") as tmp:
        work = Path(tmp)
        folder = work / "instances"
        folder.mkdir()
        n = write_instances(folder, args.instances)
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        print(f"{n} instances, {size_mb:.0f} MB, one association each, storescu TCP_NODELAY=1")
        chosen = {key: RECEIVERS[key] for key in (args.receivers or RECEIVERS)}
        # Receivers take turns run by run, so a slow spell of the disk or the
        # machine falls on all of them rather than on one.
        best = {key: 0.0 for key in chosen}
        for run in range(args.repeat):
            for key, (_, measure) in chosen.items():
                run_dir = work / f"{key}-{run}"
                run_dir.mkdir()
                best[key] = max(best[key], measure(folder, n, run_dir))
                shutil.rmtree(run_dir, ignore_errors=True)
        for key, rate in best.items():
            print(f"{chosen[key][0]:>38}: {rate:7.1f} instances/s")
        if "theranode" in best:
            ours = best["theranode"]
            for key in [k for k in best if k != "theranode"]:
                print(f"theranode / {chosen[key][0]}: {ours / best[key]:.2f}")
            print(f"theranode vs target 250 instances/s: {ours / 250:.2f}")


if __name__ == "__main__":
    main()
