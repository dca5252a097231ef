"""Ingest rate and receiver CPU: theranode vs Orthanc vs dcmtk storescp, in one run.

What is measured, for every receiver and every case:

- **instances/s**: the case's instances split over N concurrent dcmtk ``storescu``
  processes (each its own association), total instances / wall time from the
  first start to the last end;
- **receiver CPU ms per instance**: utime + stime of the receiver process and
  all its descendants (``/proc/<pid>/stat``, reaped children included through
  ``cutime``/``cstime``) over the same window, divided by the instance count.
  Each receiver is first left to go idle after its start-up, so its start-up
  work is not counted.

Cases: CT instances of 0.5 MB (512×512 int16) and of ~33 KB (128×128 int16),
the same count each, over 1, 4 and 8 parallel associations from a tuned sender
(``TCP_NODELAY=1``, which dcmtk reads; see docs/interoperability.md), and over
one association from an untuned sender (``TCP_NODELAY`` unset: Nagle's
algorithm on) for 33 KB (``--untuned-all``: for every case). Every case starts
each receiver afresh on an empty archive, so no instance is ever a duplicate.

Receivers (each on loopback, listening with TCP_NODELAY=1):

- theranode ``serve`` (fsync + atomic rename + SQLite commit per instance);
- ``theranode-2p``: the same with ``[node] listener_processes = 2`` (two processes
  accept on the port; CPU counts both);
- Orthanc with ``SyncStorageArea`` (fsync), started by ``tests.peers.run_orthanc``;
- dcmtk ``storescp --fork`` (a process per association, writes files, no fsync):
  the ceiling of this machine;
- ``pynetdicom``: a bare pynetdicom 3 Storage SCP in its own process whose
  handler only writes, fsyncs and renames each instance (pynetdicom's own
  reactors, TCP_NODELAY on accepted sockets, standard event logging off, the
  same 1 MiB maximum PDU as theranode): the floor of a durable pynetdicom
  receiver on this disk.

The #14 targets are printed next to theranode/Orthanc ratios of the same run:
≥ 1.2× Orthanc's rate for 0.5 MB and 33 KB on 1 and 4 associations, CPU per
instance ≤ 2× Orthanc's, and ≥ 5× Orthanc's rate from the untuned sender (33 KB).
With ``--repeat N`` the receivers take turns case by case, run by run, so a slow
spell of the disk falls on all of them; each cell shows the best and the
spread (min–max) of the N runs.

Run::

    .venv/bin/python benchmarks/ingest.py --quick          # smoke run, ~1 minute
    .venv/bin/python benchmarks/ingest.py --repeat 3       # the full comparison
    .venv/bin/python benchmarks/ingest.py --profile DIR    # theranode under py-spy

``--profile`` attaches ``py-spy record`` (on PATH or in the venv; not a
dependency) to theranode ``serve`` over each transfer and writes one flame
graph per case and run into DIR. py-spy takes CPU from the same two cores, so
the rates of a profiled run are not comparable with an unprofiled one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers import ORTHANC_BINARIES, free_port, run_orthanc, wait_for_port

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Instance sizes: label → rows (= columns) of an int16 CT slice.
SIZES = {"0.5 MB": 512, "33 KB": 128}
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Case:
    """One way of sending: instance size, parallel associations, sender tuning."""

    size: str
    associations: int
    tuned: bool

    @property
    def label(self) -> str:
        sender = "" if self.tuned else ", untuned"
        return f"{self.size}, {self.associations} assoc{sender}"

    @property
    def slug(self) -> str:
        """The label as a file name: ``33KB-1assoc-untuned``."""
        return "-".join(part.replace(" ", "").replace(".", "_")
                        for part in self.label.split(", "))


@dataclass(frozen=True)
class Endpoint:
    """A receiver ready on loopback: where to send, and whose CPU to count."""

    port: int
    aet: str
    pid: int


@dataclass(frozen=True)
class Measurement:
    """One case sent once to one receiver."""

    rate_per_s: float
    cpu_ms_per_instance: float


Receiver = Callable[[Path], contextlib.AbstractContextManager[Endpoint]]
#: Every run's measurement, by case and receiver name.
Results = dict[tuple[Case, str], list[Measurement]]


# --- instances ---------------------------------------------------------------------------

def write_instances(folder: Path, n: int, rows: int, seed: int = 0) -> list[Path]:
    """``n`` CT slices of ``rows``×``rows`` int16 in one series; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = _ct_slice(study, series, frame, i)
        pixels = rng.integers(0, 2000, (rows, rows), dtype=np.int16)
        ds.Rows = ds.Columns = rows
        ds.PixelData = pixels.tobytes()
        path = folder / f"CT_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ct_slice(study: str, series: str, frame: str, index: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "BENCH-001"
    ds.PatientName = "Bench^Mark"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame
    ds.Modality = "CT"
    ds.StudyDate = ds.AcquisitionDate = "20240506"
    ds.StudyTime = ds.AcquisitionTime = "100000"
    ds.ImagePositionPatient = ["-250", "-250", f"{index * 2.5:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.977", "0.977"]
    ds.SliceThickness = "2.5"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


# --- CPU of a process tree -----------------------------------------------------------------

def _stat_fields(pid: int) -> list[str]:
    """Fields 3… of ``/proc/<pid>/stat`` (after the parenthesised command name)."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    return text[text.rindex(")") + 2:].split()


def _children() -> dict[int, list[int]]:
    """Every process's children now, by parent pid."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError):  # ended meanwhile
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    return children


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it that is alive (or a zombie) now."""
    children = _children()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and all its descendants.

    A live process's ``cutime``/``cstime`` hold its children already reaped,
    so the sum over the live tree counts every process that ran in it.
    """
    ticks = 0
    for pid in _descendants(root):
        with contextlib.suppress(OSError):  # ended between listing and reading
            fields = _stat_fields(pid)
            ticks += sum(int(value) for value in fields[11:15])  # utime … cstime
    return ticks / CLOCK_TICKS_PER_S


def wait_until_idle(root: int, timeout_s: float = 20.0) -> None:
    """Return once ``root``'s tree has been idle for 0.5 s (≤ 1 clock tick of CPU).

    Called before each transfer so that a receiver's start-up work is not
    counted as per-instance CPU; gives up after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    before = tree_cpu_s(root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_cpu_s(root)
        if now - before < 1.5 / CLOCK_TICKS_PER_S:
            return
        before = now


# --- sending -----------------------------------------------------------------------------

def send(files: list[Path], to: Endpoint, case: Case, log_dir: Path) -> Measurement:
    """Send ``files`` split over ``case.associations`` concurrent storescu processes."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if case.tuned:
        env["TCP_NODELAY"] = "1"
    n = len(files)
    chunks = [files[k * n // case.associations:(k + 1) * n // case.associations]
              for k in range(case.associations)]
    logs = [log_dir / f"storescu-{k}.log" for k in range(case.associations)]
    wait_until_idle(to.pid)
    cpu_before = tree_cpu_s(to.pid)
    start = time.perf_counter()
    senders = []
    for chunk, log in zip(chunks, logs):
        with open(log, "wb") as out:
            senders.append(subprocess.Popen(
                ["storescu", "-aet", "BENCH", "-aec", to.aet, "127.0.0.1", str(to.port),
                 *map(str, chunk)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            ))
    codes = [process.wait() for process in senders]
    elapsed = time.perf_counter() - start
    cpu_s = tree_cpu_s(to.pid) - cpu_before
    for code, log in zip(codes, logs):
        if code != 0:
            raise RuntimeError(f"storescu to {to.aet} failed ({code}): "
                               f"{log.read_text(errors='replace')[-2000:]}")
    return Measurement(n / elapsed, 1000 * cpu_s / n)


# --- receivers ---------------------------------------------------------------------------

def _stop(process: subprocess.Popen[bytes], how: int = signal.SIGTERM) -> None:
    process.send_signal(how)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _theranode_config(work: Path, listener_processes: int = 1) -> tuple[Path, int]:
    port = free_port()
    config = work / "theranode.toml"
    config.write_text(
        f'[node]\nbind = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "theranode"}"\n'
        f'listener_processes = {listener_processes}\n'
        '[security]\nmin_free_disk_mb = 0\n[logging]\nlevel = "WARNING"\n'
    )
    return config, port


@contextlib.contextmanager
def theranode(work: Path, listener_processes: int = 1) -> Iterator[Endpoint]:
    config, port = _theranode_config(work, listener_processes)
    with open(work / "serve.log", "wb") as log:  # read it when a run fails
        node = subprocess.Popen([sys.executable, "-m", "theranode", "serve", "--config",
                                 str(config)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60)
        yield Endpoint(port, "THERANODE", node.pid)
    finally:
        _stop(node)


def profiled_theranode(spy_binary: str, profile_dir: Path) -> Receiver:
    """theranode ``serve`` with ``py-spy record`` attached over the transfer only.

    py-spy attaches once serve is idle (start-up is left out) and writes one
    flame graph per case when it is interrupted after the transfer; it is not
    serve's child, so its own CPU is not counted as serve's.
    """

    @contextlib.contextmanager
    def receiver(work: Path) -> Iterator[Endpoint]:
        with theranode(work) as endpoint:
            wait_until_idle(endpoint.pid)
            with open(work / "py-spy.log", "wb") as log:
                spy = subprocess.Popen(
                    [spy_binary, "record", "--pid", str(endpoint.pid), "--subprocesses",
                     "--nonblocking", "-o", str(profile_dir / f"{work.name}.svg")],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            try:
                time.sleep(1.0)  # py-spy attaches and starts sampling
                if spy.poll() is not None:
                    raise RuntimeError(f"py-spy could not attach to serve ({spy.returncode})")
                yield endpoint
            finally:
                _stop(spy, signal.SIGINT)  # py-spy writes the graph on SIGINT

    return receiver


@contextlib.contextmanager
def orthanc(work: Path) -> Iterator[Endpoint]:
    with run_orthanc(work / "orthanc") as peer:
        yield Endpoint(peer.dicom_port, peer.aet, peer.process.pid)


@contextlib.contextmanager
def storescp(work: Path) -> Iterator[Endpoint]:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    # --fork: a child per association, so parallel associations are served in
    # parallel (storescp alone takes them one after another); their CPU counts.
    scp = subprocess.Popen(["storescp", "--fork", "-od", str(out), "-aet", "STORESCP",
                            str(port)],
                           env=dict(os.environ, TCP_NODELAY="1"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 30)
        yield Endpoint(port, "STORESCP", scp.pid)
    finally:
        _stop(scp)


@contextlib.contextmanager
def bare_pynetdicom(work: Path) -> Iterator[Endpoint]:
    port = free_port()
    out = work / "bare"
    out.mkdir()
    scp = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port), str(out)])
    try:
        wait_for_port(port, 30)
        yield Endpoint(port, "BARE", scp.pid)
    finally:
        _stop(scp)


def serve_bare(port: int, out: Path) -> None:
    """The bare pynetdicom Storage SCP (durable write only), until SIGTERM."""
    import socket

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

    def on_store(event: Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        target = out / f"{request.AffectedSOPInstanceUID}.dcm"
        temporary = target.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(event.encoded_dataset())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        directory = os.open(out, os.O_RDONLY)
        os.fsync(directory)
        os.close(directory)
        return 0x0000

    def on_open(event: Event) -> None:
        transport = event.assoc.dul.socket
        assert transport is not None and transport.socket is not None
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    _config.LOG_HANDLER_LEVEL = "none"  # as theranode's serve does
    ae = AE("BARE")
    ae.maximum_pdu_size = 1024 * 1024
    ae.add_supported_context(CT_STORAGE, ALL_TRANSFER_SYNTAXES)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ae.start_server(("127.0.0.1", port), block=True,
                    evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])


def theranode_two_listeners(work: Path) -> contextlib.AbstractContextManager[Endpoint]:
    """theranode ``serve`` with ``[node] listener_processes = 2`` (CPU: both processes)."""
    return theranode(work, listener_processes=2)


RECEIVERS: dict[str, Receiver] = {
    "theranode": theranode,
    "theranode-2p": theranode_two_listeners,
    "orthanc": orthanc,
    "storescp": storescp,
    "pynetdicom": bare_pynetdicom,
}


# --- report ------------------------------------------------------------------------------

def print_table(title: str, results: Results, names: list[str],
                cell: Callable[[list[Measurement]], str]) -> None:
    """One row per case, one column per receiver."""
    cases = list(dict.fromkeys(case for case, _ in results))
    width = max(len(cell(runs)) + 2 for runs in results.values())
    width = max(width, *(len(name) + 2 for name in names))
    print(f"\n{title:26}" + "".join(f"{name:>{width}}" for name in names))
    for case in cases:
        print(f"{case.label:26}"
              + "".join(f"{cell(results[case, name]):>{width}}" for name in names))


def rate_cell(runs: list[Measurement]) -> str:
    """Best instances/s, and the min–max of the runs when there are several."""
    return _cell([m.rate_per_s for m in runs], max(m.rate_per_s for m in runs), 0)


def cpu_cell(runs: list[Measurement]) -> str:
    """Least receiver CPU ms per instance, and the min–max of the runs."""
    cpus = [m.cpu_ms_per_instance for m in runs]
    return _cell(cpus, min(cpus), 2)


def _cell(values: list[float], best: float, digits: int) -> str:
    text = f"{best:.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}–{max(values):.{digits}f})"
    return text


def rate_target(case: Case) -> float | None:
    """#14's minimum theranode/Orthanc rate for ``case`` (None: no target)."""
    if not case.tuned:
        return 5.0 if case.size == "33 KB" and case.associations == 1 else None
    return 1.2 if case.associations in (1, 4) else None


def print_ratios(results: Results, ours_name: str = "theranode") -> None:
    """``ours_name``/Orthanc (best vs best) for every case, beside the #14 targets."""
    print(f"\n{ours_name} / Orthanc, best runs".ljust(34) + "rate  target        CPU  target")
    for case in dict.fromkeys(case for case, _ in results):
        ours, theirs = results[case, ours_name], results[case, "orthanc"]
        rate = max(m.rate_per_s for m in ours) / max(m.rate_per_s for m in theirs)
        their_cpu = min(m.cpu_ms_per_instance for m in theirs)
        cpu = min(m.cpu_ms_per_instance for m in ours) / their_cpu if their_cpu else float("inf")
        wanted = rate_target(case)
        rate_goal = "" if wanted is None else f"≥ {wanted:.1f} {_verdict(rate >= wanted)}"
        print(f"{case.label:30} {rate:7.2f}  {rate_goal:11} {cpu:6.2f}  "
              f"≤ 2.0 {_verdict(cpu <= 2.0)}")


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# --- main --------------------------------------------------------------------------------

def choose_cases(args: argparse.Namespace) -> list[Case]:
    cases = [Case(size, n, True) for size in SIZES for n in args.associations]
    untuned = cases if args.untuned_all else [Case("33 KB", 1, True)]
    return cases + [Case(c.size, c.associations, False) for c in untuned]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300,
                        help="CT instances per case, of each size (default 300)")
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4, 8],
                        help="parallel association counts (default 1 4 8)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs per case and receiver (default 2)")
    parser.add_argument("--receivers", nargs="+", choices=list(RECEIVERS), default=None,
                        help="measure only these (default: all)")
    parser.add_argument("--untuned-all", action="store_true",
                        help="untuned sender for every case, not only 33 KB on 1 association")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 40 instances, 1 and 4 associations, one run")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="attach py-spy to theranode over each transfer; graphs into DIR")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.instances, args.associations, args.repeat = 40, [1, 4], 1
    return args


def py_spy() -> str | None:
    """The py-spy executable on PATH or beside this interpreter (a venv's bin/)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def chosen_receivers(args: argparse.Namespace) -> dict[str, Receiver]:
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install Debian's dcmtk")
    chosen = {name: RECEIVERS[name] for name in (args.receivers or RECEIVERS)}
    if "orthanc" in chosen and not any(map(shutil.which, ORTHANC_BINARIES)):
        sys.exit("Orthanc not found: install Debian's orthanc, or leave it out (--receivers)")
    if args.profile is not None:
        if "theranode" not in chosen:
            sys.exit("--profile profiles theranode: keep it among --receivers")
        spy = py_spy()
        if spy is None:
            sys.exit("--profile needs py-spy (a sampling profiler, not a dependency of "
                     "theranode): .venv/bin/pip install py-spy, or put it on PATH")
        args.profile.mkdir(parents=True, exist_ok=True)
        chosen["theranode"] = profiled_theranode(spy, args.profile.resolve())
    return chosen


def measure(receiver: Receiver, files: list[Path], case: Case, run_dir: Path) -> Measurement:
    """One case against a fresh receiver; its logs are printed if anything fails."""
    run_dir.mkdir()
    try:
        with receiver(run_dir) as endpoint:
            return send(files, endpoint, case, run_dir)
    except Exception:
        for log in sorted(run_dir.glob("**/*.log")):
            tail = log.read_text(errors="replace")[-3000:]
            print(f"--- {log.relative_to(run_dir)}:\n{tail}", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    receivers = chosen_receivers(args)
    cases = choose_cases(args)
    files = {size: write_instances(work / f"ct{rows}", args.instances, rows)
             for size, rows in SIZES.items()}
    print(f"{args.instances} CT instances per case, {len(cases)} cases, "
          f"{args.repeat} run(s) each, {os.cpu_count()} CPUs; "
          f"receivers: {', '.join(receivers)}")
    results: Results = {}
    for repeat in range(args.repeat):
        for case in cases:
            for name, receiver in receivers.items():
                run_dir = work / f"{name}-{case.slug}-run{repeat + 1}"
                measured = measure(receiver, files[case.size], case, run_dir)
                results.setdefault((case, name), []).append(measured)
            print(f"run {repeat + 1}: {case.label} done", flush=True)
    names = list(receivers)
    print_table("instances/s", results, names, rate_cell)
    print_table("receiver CPU ms/instance", results, names, cpu_cell)
    for ours in ("theranode", "theranode-2p"):
        if ours in receivers and "orthanc" in receivers:
            print_ratios(results, ours)
    if args.profile is not None:
        print(f"\ntheranode flame graphs (py-spy, transfer only): {args.profile.resolve()}")


def main() -> None:
    args = parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), Path(args.serve_bare[1]))
        return
    with tempfile.TemporaryDirectory(prefix="theranode-bench-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
