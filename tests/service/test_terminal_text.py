"""Strings from DICOM objects reach the operator's terminal escaped, one line each (issue 12
item 7), and never reach the log."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.peers import free_port
from tests.service import factory
from tests.service.nodes import running_node, send
from theranode.config.schema import load_settings
from theranode.service.cli.main import main
from theranode.service.cli.terminal_text import terminal_text
from theranode.service.plan.planner import Planner
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobState, JobStore

INJECTION = datetime(2024, 5, 6, 9, 15)
NOW = "2024-05-20T10:00:00"
#: Clears the screen, then starts a line of its own.
HOSTILE_ID = "P1\x1b[2J\nFAKE LINE"
SHOWN_ID = "P1\\x1b[2J\\nFAKE LINE"
#: A failure reason quoting a code meaning a peer sent: colour codes and a forged line.
HOSTILE_REASON = "ROI Müller \x1b[31mred\x1b[0m\r\nFORGED ALERT"
SHOWN_REASON = "ROI Müller \\x1b[31mred\\x1b[0m\\r\\nFORGED ALERT"


def test_terminal_text_escapes_controls_and_keeps_printable_text() -> None:
    assert terminal_text("Müller^Jürgen 田中") == "Müller^Jürgen 田中"
    assert terminal_text("a\x1b[2J\n\r\tb\x00\x7f\x9b") == "a\\x1b[2J\\n\\r\\tb\\x00\\x7f\\x9b"
    assert terminal_text("evil\u202eexe.pdf\u2028x") == "evil\\u202eexe.pdf\\u2028x"
    assert terminal_text(terminal_text(HOSTILE_ID)) == SHOWN_ID  # escaping twice changes nothing


@pytest.fixture
def hostile_node_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> tuple[Path, int]:
    """A node's data folder holding a patient whose PatientID clears the screen and breaks
    the line, and a failed job whose reason does the same; returns the config and job id."""
    config = tmp_path / "theranode.toml"
    config.write_text(
        f'[node]\nbind = "127.0.0.1"\nport = {free_port()}\ndata_dir = "{tmp_path / "data"}"\n'
        "[security]\nmin_free_disk_mb = 0\n",
        encoding="utf-8",
    )
    settings = load_settings(config)
    acquired = INJECTION + timedelta(hours=24)
    caplog.set_level(logging.DEBUG)
    with running_node(settings) as node:
        statuses = send(node.port, [factory.nm(HOSTILE_ID, INJECTION, acquired, frame="1.2.3.24"),
                                    factory.ct(HOSTILE_ID, acquired, frame="1.2.3.24")])
    assert statuses == [0x0000, 0x0000]
    db = open_database(settings.data_dir / "theranode.db")
    index, jobs = IndexStore(db), JobStore(db)
    (key,) = index.patient_keys()
    (plan,) = Planner(index, jobs, settings).plan_patient(key, submit=False)
    job = jobs.submit(kind="cycle", target=plan.target, patient_key=key, label="1.1",
                      fingerprint="inputs", payload=None, created_at=NOW)
    jobs.claim_next(NOW, str(tmp_path))
    jobs.finish(job.id, JobState.FAILED, NOW, HOSTILE_REASON)
    return config, job.id


def _single_lines(out: str) -> list[str]:
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    # no line starts with the forged text: it stays on the line of the value holding it
    assert not [line for line in lines if line.startswith(("FAKE LINE", "FORGED"))]
    return lines


def test_status_and_jobs_show_dicom_strings_escaped_on_one_line(
    hostile_node_data: tuple[Path, int],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, job_id = hostile_node_data
    assert main(["status", "--config", str(config)]) == 0
    lines = _single_lines(capsys.readouterr().out)
    assert any(line.startswith(f"Patient {SHOWN_ID} (key ") for line in lines)
    assert f"  ALERT {SHOWN_ID}/1.1: job {job_id} failed (version 1) — {SHOWN_REASON}" in lines

    assert main(["jobs", "--config", str(config)]) == 0
    lines = _single_lines(capsys.readouterr().out)
    assert any(f"{SHOWN_ID}/1.1" in line and "failed" in line for line in lines)
    assert f"       {SHOWN_REASON}" in lines

    assert main(["jobs", str(job_id), "--config", str(config)]) == 0
    lines = _single_lines(capsys.readouterr().out)
    assert f"Job {job_id}: cycle {SHOWN_ID}/1.1, state failed" in lines
    assert f"  {SHOWN_REASON}" in lines

    # what the operator sees, the log never holds
    records = [*caplog.get_records("setup"), *caplog.records]  # the node ran in the fixture
    logged = "\n".join(record.getMessage() for record in records)
    assert "Series" in logged or "series" in logged  # the node did log the C-STOREs
    assert "P1\x1b" not in logged and "FAKE LINE" not in logged and SHOWN_ID not in logged


def test_outcomes_import_quotes_a_file_value_escaped_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "theranode.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    (tmp_path / "data").mkdir()
    cycles = tmp_path / "cycles.csv"
    cycles.write_text(
        'patient_id,cycle,admin_date,activity_gbq\n"X\x1b[2J\nFORGED",1,2024-01-02,7.4\n',
        encoding="utf-8",
    )
    assert main(["outcomes", "import", str(cycles), "--config", str(config)]) == 1
    lines = _single_lines(capsys.readouterr().out)
    assert any("patient 'X\\x1b[2J\\nFORGED'" in line for line in lines)
    assert lines[-1] == "some files were rejected: nothing of them was imported"
