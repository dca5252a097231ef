"""``theranode health`` and the Docker health check that runs it (issue #12, item 12).

Before, the image's health check was ``echoscu -aet HEALTHCHECK -aec THERANODE
127.0.0.1 11112``: it failed as soon as an AE allow-list, a host allow-list or
TLS was on, or the port or AE title differed from the defaults.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.peers import require_tool
from tests.reliability.certificates import _authority, _leaf
from tests.service.nodes import free_port, running_node
from theranode.config.schema import load_settings
from theranode.service.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _config(path: Path, data_dir: Path, port: int, **security: Any) -> Path:
    lines = ["[node]", 'ae_title = "THERANODE"', 'bind = "127.0.0.1"', f"port = {port}",
             f'data_dir = "{data_dir}"', "[security]", "min_free_disk_mb = 0"]
    for key, value in security.items():
        rendered = ("[" + ", ".join(f'"{v}"' for v in value) + "]") if isinstance(value, list) \
            else f'"{value}"'
        lines.append(f"{key} = {rendered}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _health(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["health", "--config", str(config), "--timeout", "5"])
    return code, capsys.readouterr().out


@pytest.fixture
def free() -> int:
    return free_port()


@pytest.mark.parametrize("security", [
    {},
    {"allowed_calling_ae_titles": ["MODALITY"]},  # HEALTHCHECK refused: still alive
    {"allowed_hosts": ["192.0.2.0/24"]},  # loopback closed at once: alive
], ids=["open", "ae-allow-list", "host-allow-list"])
def test_health_passes_on_a_running_node_whatever_its_access_control(
    tmp_path: Path, free: int, capsys: pytest.CaptureFixture[str], security: dict[str, Any]
):
    config = _config(tmp_path / "node.toml", tmp_path / "data", free, **security)
    with running_node(load_settings(config)):
        code, out = _health(config, capsys)
    assert code == 0 and out.count("ok   ") == 2, out


def test_health_passes_over_tls_with_client_certificates_required(
    tmp_path: Path, free: int, capsys: pytest.CaptureFixture[str]
):
    require_tool("openssl")
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = _authority(pki, "ca")
    cert, key = _leaf(pki, "node", ca, "serverAuth,clientAuth")
    config = _config(tmp_path / "node.toml", tmp_path / "data", free, tls_cert=cert,
                     tls_key=key, tls_ca=ca[0])
    with running_node(load_settings(config)):
        code, out = _health(config, capsys)
    assert code == 0, out
    assert "C-ECHO succeeded over TLS" in out


def test_health_fails_when_the_node_is_not_running(
    tmp_path: Path, free: int, capsys: pytest.CaptureFixture[str]
):
    config = _config(tmp_path / "node.toml", tmp_path / "data", free)
    code, out = _health(config, capsys)
    assert code == 1 and "FAIL database" in out and "FAIL listener" in out
    with running_node(load_settings(config)):
        pass  # the database now exists; the listener is closed again
    code, out = _health(config, capsys)
    assert code == 1 and "ok   database" in out and "FAIL listener" in out


def test_the_docker_health_check_runs_theranode_health_with_the_served_config():
    text = (ROOT / "Dockerfile").read_text()
    health = re.search(r"^HEALTHCHECK .*?\\\n\s+CMD (.+)$", text, re.MULTILINE)
    served = re.search(r'^CMD \[(.+)\]$', text, re.MULTILINE)
    assert health and served
    health_cmd = shlex.split(health.group(1))
    serve_cmd = [part.strip().strip('"') for part in served.group(1).split(",")]
    assert health_cmd[:2] == ["theranode", "health"]
    assert "echoscu" not in health.group(0)
    config = health_cmd[health_cmd.index("--config") + 1]
    assert serve_cmd[serve_cmd.index("--config") + 1] == config
    assert f"COPY config/theranode.toml {config}" in text
    assert load_settings(ROOT / "config" / "theranode.toml").node.port == 11112
