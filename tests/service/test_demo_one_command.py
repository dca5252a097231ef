"""`theranode demo` with no node running: it starts its own, shows the doses, and cleans up.

Each test runs the command as a user does, ``python -m theranode demo``, in a
child process: the demo starts a real ``theranode serve`` child of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.peers import free_port
from theranode.config.schema import load_settings
from theranode.service.deliver.sender import (
    COMPREHENSIVE_3D_SR_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
    RT_DOSE_STORAGE,
)

SOP_CLASS_OF = {"RT Dose": RT_DOSE_STORAGE, "SR": COMPREHENSIVE_3D_SR_STORAGE,
                "PDF": ENCAPSULATED_PDF_STORAGE}
NODE_PID = re.compile(r"Started a temporary node \(pid (\d+),")
#: ``  cycle 1 v1   RT Dose  /path`` and its continuation lines ``               SR       /path``.
RESULT_LINE = re.compile(r"^  (?P<label>cycle \d+ v\d+|course v\d+)?\s+(?P<kind>RT Dose|SR|PDF)"
                         r"\s+(?P<path>/\S+\.dcm)$")


def _as_from_a_terminal() -> None:
    """Ctrl-C raises KeyboardInterrupt in the demo, as from a shell: a pytest-xdist worker
    ignores SIGINT, and a child inherits an ignored signal (POSIX exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def demo(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "theranode", "demo", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # faulthandler: a demo that hangs is sent SIGABRT and prints every thread's stack.
        env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1"),
        preexec_fn=_as_from_a_terminal,
    )


def processes_in_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (the temporary node and its workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def assert_node_gone(output: str) -> None:
    match = NODE_PID.search(output)
    assert match, output
    pid = int(match[1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert processes_in_group(pid) == []


def printed_results(stdout: str) -> dict[str, dict[str, Path]]:
    """``{"cycle 1 v1": {"RT Dose": path, …}, "course v1": …}`` from the printed list."""
    results: dict[str, dict[str, Path]] = {}
    label = ""
    for line in stdout.splitlines():
        match = RESULT_LINE.match(line)
        if match:
            label = match["label"] or label
            results.setdefault(label, {})[match["kind"]] = Path(match["path"])
    return results


def test_demo_without_a_node_starts_one_and_prints_doses_beside_the_truth(tmp_path: Path):
    work = tmp_path / "demo"
    started = time.monotonic()
    process = demo("--cycles", "1", "--work-dir", str(work), "--timeout", "300", cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=420)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, stdout + stderr
    print(f"theranode demo --cycles 1: {elapsed:.0f} s")

    truth = json.loads((work / "course" / "truth.json").read_text())
    (cycle,) = [c for c in truth["cycles"] if c["number"] == 1]
    for name, entry in cycle["vois"].items():
        row = re.search(rf"^  {re.escape(name)} +(\d[\d.]*)( ± [\d.]+)? +"
                        rf"{entry['mean_dose_gy']:.3f} +[+-]\d+\.\d%", stdout, re.MULTILINE)
        assert row, f"{name} has no dose and difference in:\n{stdout}"
        assert float(row[1]) > 0

    results = printed_results(stdout)
    assert set(results) == {"cycle 1 v1", "course v1"}, stdout
    for label, files in results.items():
        assert set(files) == set(SOP_CLASS_OF), (label, files)
        for kind, path in files.items():
            assert path.is_file() and path.parent == work / "received"
            assert pydicom.dcmread(path).SOPClassUID == SOP_CLASS_OF[kind]

    settings = load_settings(work / "theranode.toml")  # what the node ran with
    assert [(d.ae_title, d.host) for d in settings.destinations] == [
        ("THERANODE-DEMO", "127.0.0.1")]
    assert settings.data_dir == work / "node-data"
    assert "Temporary node stopped (exit status 0)" in stdout
    assert_node_gone(stdout)


def test_a_node_that_does_not_start_ends_the_demo_with_its_log(tmp_path: Path):
    config = tmp_path / "site.toml"  # a valid file, but the engine refuses 3.5 g/mL
    config.write_text("[dosimetry]\ndensity_points_g_per_ml = [0.0012, 0.93, 1.03, 1.12, 3.5]\n")
    process = demo("--cycles", "1", "--config", str(config), "--work-dir", str(tmp_path / "d"),
                   cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 1, stdout + stderr
    assert "The temporary node exited at start-up (exit status 2)" in stderr
    assert "Last lines of the node's log" in stderr
    assert "density" in stderr.split("Last lines of the node's log", 1)[1]  # the node's reason
    assert "Sending" not in stdout
    assert_node_gone(stdout)


def test_interrupting_the_demo_stops_its_node(tmp_path: Path):
    process = demo("--cycles", "1", "--work-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if NODE_PID.search(line):
            break
    process.send_signal(signal.SIGINT)  # Ctrl-C, to the demo alone
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # faulthandler prints where it hangs
        stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"the demo did not exit within 120 s of Ctrl-C:\n{stdout}\n{stderr}")
    stdout = "".join(lines) + stdout
    assert process.returncode == 130, stdout + stderr
    assert "Interrupted: stopping the temporary node" in stderr
    assert "Temporary node stopped" in stdout
    assert_node_gone(stdout)


def test_with_node_it_uses_that_node_and_says_so_when_none_answers(tmp_path: Path):
    process = demo("--cycles", "1", "--node", f"127.0.0.1:{free_port()}", "--work-dir",
                   str(tmp_path / "d"), cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 1, stdout + stderr
    assert "Started a temporary node" not in stdout
    assert "No node answers a C-ECHO as THERANODE at 127.0.0.1:" in stderr
    assert "Writing the synthetic course" not in stdout
