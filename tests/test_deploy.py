"""The deployment in ``deploy/`` (docs/scale-out.md): its settings pass ``check-config`` and
the nodes and workers agree on everything a job and a delivery depend on."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from theranode.config.schema import load_settings
from theranode.service.cli.main import main

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.mark.parametrize("name", ["node.toml", "worker.toml"])
def test_the_settings_pass_check_config(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(DEPLOY / name)]) == 0
    out = capsys.readouterr().out
    assert "database.url = 'postgresql://theranode@postgres:5432/theranode?" in out


def test_nodes_and_workers_share_the_database_folder_and_every_job_setting() -> None:
    node, worker = load_settings(DEPLOY / "node.toml"), load_settings(DEPLOY / "worker.toml")
    assert node.shared_database and node.database_url == worker.database_url
    assert node.data_dir == worker.data_dir
    # a worker does not listen, and how many jobs it runs at once is its own; every other
    # setting decides what a job computes or where its results go, and must be the same
    jobs = dataclasses.replace(worker.jobs, workers=node.jobs.workers)
    assert dataclasses.replace(worker, node=node.node, security=node.security, jobs=jobs,
                               source=node.source) == node


def test_the_load_balancer_sends_to_the_nodes_of_the_compose_file() -> None:
    compose = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    haproxy = (DEPLOY / "haproxy.cfg").read_text(encoding="utf-8")
    port = load_settings(DEPLOY / "node.toml").node.port
    servers = re.findall(r"^\s+server (\S+) (\S+):(\d+)$", haproxy, re.MULTILINE)
    assert servers == [("node-a", "node-a", str(port)), ("node-b", "node-b", str(port))]
    for name, _host, _port in servers:
        assert re.search(rf"^  {name}:\n(    .*\n)*    command: \[\"serve\"", compose,
                         re.MULTILINE), name
    assert f"bind :{port}" in haproxy and f'"{port}:{port}"' in compose
