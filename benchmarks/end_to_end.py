"""End to end: last instance of a cycle acknowledged → last result stored in the PACS.

Writes one 4-time-point cycle of the synthetic course at clinical size (CT
512×512×200 per time point, SPECT 128×128×100), starts Orthanc as the PACS and
a theranode node (its own process, as in production) whose destination is
that Orthanc, sends the cycle to theranode over one association, and measures
from the C-STORE response of the last instance to the moment Orthanc holds
the cycle's RT Dose, SR and PDF. The quiet period is part of that time and is
printed (default 5 s here; the shipped default is 30 s).

Target on a 2-core machine: ≤ 90 s. Run: ``python -m benchmarks.end_to_end``
(``--small`` for a quick check on test-size grids).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread

from tests.peers import free_port, run_orthanc, wait_for_port
from tests.service.nodes import scu
from theranode.dicomio.synthetic_course import CourseWriteSpec, PhantomGrids, write_course

TARGET_S = 90.0


def node_config(work: Path, port: int, orthanc_port: int, quiet_s: float) -> Path:
    config = work / "node.toml"
    config.write_text(
        f'[node]\nbind = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "data"}"\n'
        "[security]\nmin_free_disk_mb = 0\n"
        f"[protocol]\nquiet_period_s = {quiet_s}\n[jobs]\npoll_interval_s = 1.0\n"
        '[[destinations]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc_port}\n")
    return config


def send_all(port: int, files: list[Path]) -> float:
    """C-STORE every file on one association; monotonic time of the last acknowledgement."""
    assoc = scu().associate("127.0.0.1", port, ae_title="THERANODE")
    if not assoc.is_established:
        raise ConnectionError("theranode did not accept the association")
    acknowledged = 0.0
    try:
        for path in files:
            status = assoc.send_c_store(dcmread(path))
            if "Status" not in status or status.Status != 0x0000:
                raise RuntimeError(f"{path} was not stored: {status}")
            acknowledged = time.monotonic()
    finally:
        assoc.release()
    return acknowledged


def results_in_orthanc(orthanc: object) -> set[str]:
    modalities = set()
    for series_id in orthanc.get("/series"):  # type: ignore[attr-defined]
        tags = orthanc.get(f"/series/{series_id}")["MainDicomTags"]  # type: ignore[attr-defined]
        if tags.get("SeriesDescription", "").startswith("theranode") and "cycle 1" in tags.get(
                "SeriesDescription", ""):
            modalities.add(tags["Modality"])
    return modalities


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="test-size grids")
    parser.add_argument("--quiet-s", type=float, default=5.0, help="node quiet period (s)")
    args = parser.parse_args()
    grids = PhantomGrids.small() if args.small else PhantomGrids.clinical()
    with tempfile.TemporaryDirectory(prefix="theranode-e2e-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        course = write_course(work / "course", CourseWriteSpec(grids=grids, cycles=(1,)), 1)
        files = [f for tp in course.time_points for f in
                 (*tp.ct_files, *tp.spect_files, *([tp.rtstruct_file] if tp.rtstruct_file else []))]
        print(f"course written: {len(files)} files in {time.monotonic() - started:.0f} s")
        port = free_port()
        with run_orthanc(work / "orthanc") as orthanc:
            config = node_config(work, port, orthanc.dicom_port, args.quiet_s)
            log = open(work / "node.log", "wb")
            node = subprocess.Popen([sys.executable, "-m", "theranode", "serve", "--config",
                                     str(config)], stdout=subprocess.DEVNULL, stderr=log)
            try:
                wait_for_port(port)
                sent_at = time.monotonic()
                acknowledged = send_all(port, files)
                print(f"sent in {acknowledged - sent_at:.1f} s; waiting for the results …")
                while results_in_orthanc(orthanc) != {"RTDOSE", "SR", "DOC"}:
                    if time.monotonic() - acknowledged > 20 * TARGET_S:
                        print((work / "node.log").read_text()[-3000:])
                        return 1
                    time.sleep(0.5)
                elapsed = time.monotonic() - acknowledged
            finally:
                node.send_signal(signal.SIGTERM)
                node.wait(timeout=60)
        print(f"last instance acknowledged → RT Dose, SR and PDF in Orthanc: {elapsed:.1f} s "
              f"(quiet period {args.quiet_s:g} s included; grids "
              f"{'small' if args.small else 'clinical'})")
        print(f"target {TARGET_S:g} s; ratio elapsed/target = {elapsed / TARGET_S:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
