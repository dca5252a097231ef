"""The settings schema and the shipped configuration file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config.schema import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    iter_settings,
    load_settings,
    settings_from_dict,
)
from service.cli import main


def test_shipped_config_equals_the_schema_defaults():
    shipped = load_settings(DEFAULT_CONFIG_PATH)
    defaults = Settings()
    assert dict((n, v) for n, v, _ in iter_settings(shipped)) == dict(
        (n, v) for n, v, _ in iter_settings(defaults))


def test_every_setting_is_documented_in_the_shipped_file():
    text = DEFAULT_CONFIG_PATH.read_text()
    for name, _, help_text in iter_settings(Settings()):
        section, key = name.split(".")
        assert help_text, f"{name} has no help text"
        if section == "grouping" and key == "time_points":
            assert "[[grouping.time_points]]" in text
            continue
        # the key appears, preceded by at least one comment line
        block = re.search(rf"((?:#.*\n)+)(?:.*\n)*?{key} = ", text.split(f"[{section}]")[1])
        assert block, f"{name} is not documented with a comment in {DEFAULT_CONFIG_PATH.name}"


def test_unknown_keys_and_bad_values_get_one_message_each():
    with pytest.raises(ConfigError) as error:
        settings_from_dict({
            "node": {"port": 70000, "ae_titel": "X", "ae_title": "A\\B"},
            "security": {"allowed_hosts": ["not-an-ip"], "max_associations": "8"},
            "cohort": {"schedule": "every night"},
            "nonsense": {},
        })
    problems = error.value.problems
    assert len(problems) == 7, problems
    text = "\n".join(problems)
    assert "node.port: must be a TCP port 1–65535, got 70000" in text
    assert "node.ae_titel: unknown setting" in text
    assert "node.ae_title: must be a DICOM AE title" in text
    assert "security.allowed_hosts: must list IP addresses" in text
    assert "security.max_associations: must be an integer, got '8'" in text
    assert "cohort.schedule: must be a 5-field cron expression" in text
    assert "[nonsense]: unknown section" in text


def test_overlapping_time_point_windows_are_rejected():
    with pytest.raises(ConfigError, match="overlap"):
        settings_from_dict({"grouping": {"time_points": [
            {"nominal_h": 4, "min_h": 0, "max_h": 30},
            {"nominal_h": 24, "min_h": 12, "max_h": 48}]}})


def test_tls_cert_without_key_is_rejected():
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        settings_from_dict({"security": {"tls_cert": "/etc/cert.pem"}})


def test_destinations_are_a_list_of_tables():
    settings = settings_from_dict({"destinations": [
        {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}]})
    assert settings.destinations[0].ae_title == "ORTHANC"


def test_check_config_prints_values_in_effect(tmp_path: Path, capsys):
    config = tmp_path / "site.toml"
    config.write_text('[node]\nport = 4242\nae_title = "SITE"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "node.port = 4242" in out and "node.ae_title = 'SITE'" in out
    assert "security.max_associations = 8" in out


def test_check_config_reports_problems_and_exits_2(tmp_path: Path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[node]\nport = "eleven"\n')
    assert main(["check-config", "--config", str(config)]) == 2
    assert "node.port: must be an integer, got 'eleven'" in capsys.readouterr().err


def test_missing_config_file_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "file not found" in capsys.readouterr().err
