"""The settings schema and the shipped configuration file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from theranode.config.schema import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    iter_settings,
    load_settings,
    settings_from_dict,
)
from theranode.service.cli.main import main


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


# -- what the dosimetry engine refuses is refused before the node starts (issue #11) --
ENGINE_REFUSALS = [
    ("density_points_g_per_ml = [0.0012, 0.93, 1.03, 1.12, 3.5]", "density cap"),
    ("density_points_g_per_ml = [0.0012, 0.93, 1.03, 0.9, 1.96]", "must not decrease"),
    ("density_points_hu = [-1000.0, -98.0, 14.0, 100.0, inf]", "must be finite"),
    ("gas_threshold_g_per_ml = 0.0", "gas density threshold must be positive"),
    ("min_lesion_volume_ml = inf", "positive and finite"),
    ("population_half_life_organ_h = inf", "effective decay constant must be positive"),
]


@pytest.mark.parametrize(("line", "words"), ENGINE_REFUSALS)
def test_check_config_refuses_what_the_engine_refuses(tmp_path: Path, capsys, line, words):
    config = tmp_path / "engine.toml"
    section = "protocol" if line.startswith("population") else "dosimetry"
    config.write_text(f"[{section}]\n{line}\n")
    load_settings(config)  # the schema alone lets it through: only the engine knows
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "the dosimetry engine refuses" in err and words in err, err


def test_every_engine_refusal_is_reported_one_per_line(tmp_path: Path, capsys):
    config = tmp_path / "engine.toml"
    config.write_text(
        "[dosimetry]\ndensity_points_g_per_ml = [0.0012, 0.93, 1.03, 1.12, 3.5]\n"
        "gas_threshold_g_per_ml = 0.0\n"
    )
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "has 2 problem(s)" in err
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert problems[0].startswith("  - dosimetry.density_points_hu / density_points_g_per_ml:")
    assert problems[1].startswith("  - dosimetry.gas_policy / gas_threshold_g_per_ml:")


def test_serve_refuses_to_start_on_what_the_engine_refuses(tmp_path: Path, capsys, monkeypatch):
    import theranode.service.app

    def node_must_not_start(*args, **kwargs):
        raise AssertionError("serve started a node on settings the engine refuses")

    monkeypatch.setattr(theranode.service.app, "Node", node_must_not_start)
    config = tmp_path / "engine.toml"
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n'
        "[dosimetry]\ndensity_points_g_per_ml = [0.0012, 0.93, 1.03, 1.12, 3.5]\n"
    )
    assert main(["serve", "--config", str(config)]) == 2
    assert "density cap" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_jobs_build_the_engine_settings_check_config_built():
    from theranode.dosimetry.cycle import EngineSettings
    from theranode.service.jobs.engine_settings import build_engine_settings

    engine = build_engine_settings(load_settings())
    assert isinstance(engine, EngineSettings)
    assert engine.density_calibration.points_g_per_ml[-1] == 1.96
    with pytest.raises(ConfigError, match="density cap"):
        build_engine_settings(settings_from_dict(
            {"dosimetry": {"density_points_g_per_ml": [0.0012, 0.93, 1.03, 1.12, 3.5]}}))


# -- the camera's resolution for partial-volume correction (issue #15) ---------------
@pytest.mark.parametrize(("text", "problem"), [
    ('[dosimetry]\npartial_volume = "gtm"\n', "set calibration.default_spect_fwhm_mm"),
    (('[dosimetry]\npartial_volume = "paper-contrast"\n[[calibration.cameras]]\n'
      'model_name = "A"\nspect_fwhm_mm = 11.0\n[[calibration.cameras]]\nmodel_name = "B"\n'),
     "(missing: calibration.cameras[1].spect_fwhm_mm)"),
    ("[calibration]\ndefault_spect_fwhm_mm = inf\n", "finite"),
])
def test_check_config_refuses_partial_volume_without_a_camera_resolution(
    tmp_path: Path, capsys, text, problem,
):
    config = tmp_path / "pvc.toml"
    config.write_text(text)
    errors = check_config_errors(config, capsys)
    assert any(problem in line for line in errors), errors


def test_the_camera_resolution_reaches_the_engine_and_the_time_points(tmp_path: Path):
    from pydicom.dataset import Dataset

    from theranode.dosimetry.partial_volume import PartialVolumeMethod
    from theranode.service.jobs.engine_settings import build_engine_settings
    from theranode.service.receive.calibration import spect_fwhm_mm

    settings = settings_from_dict({
        "dosimetry": {"partial_volume": "gtm"},
        "calibration": {"default_spect_fwhm_mm": 12.0, "cameras": [
            {"model_name": "Gamma 3000", "spect_fwhm_mm": 10.5},
            {"model_name": "Old", "cps_per_mbq": 8.0}]},
    })
    engine = build_engine_settings(settings)
    assert (engine.partial_volume, engine.spect_fwhm_mm) == (PartialVolumeMethod.GTM, 12.0)
    gamma, old, other = Dataset(), Dataset(), Dataset()
    gamma.ManufacturerModelName, old.ManufacturerModelName = "Gamma 3000", "Old"
    other.ManufacturerModelName = "Unknown"
    assert [spect_fwhm_mm(ds, settings.calibration) for ds in (gamma, old, other)] == [
        10.5, 12.0, 12.0]
    assert spect_fwhm_mm(other, settings_from_dict({}).calibration) is None


# -- TLS settings: refused when they would not do what they say (issue #12 item 11) --
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    from tests.peers import require_tool
    from tests.reliability.certificates import make_pki

    require_tool("openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(tmp_path: Path, security: dict[str, object],
               destination: dict[str, object] | None = None) -> Path:
    lines = ["[security]", *(f'{k} = "{v}"' for k, v in security.items())]
    if destination is not None:
        lines += ["[[destinations]]", 'name = "pacs"', 'host = "127.0.0.1"', "port = 11112",
                  *(f'{k} = "{v}"' for k, v in destination.items())]
    config = tmp_path / "tls.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def check_config_errors(config: Path, capsys) -> list[str]:
    assert main(["check-config", "--config", str(config)]) == 2
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]


def test_tls_ca_without_a_certificate_is_refused_not_served_in_plaintext():
    with pytest.raises(ConfigError, match="security.tls_ca: needs tls_cert and tls_key"):
        settings_from_dict({"security": {"tls_ca": "/etc/theranode/ca.pem"}})


def test_destination_tls_settings_that_would_not_apply_are_refused():
    with pytest.raises(ConfigError) as error:
        settings_from_dict({"destinations": [
            {"name": "a", "tls_ca": "/ca.pem", "tls_cert": "/node.pem"},
            {"name": "b", "tls_cert": "/node.pem", "tls_key": "/node.key"},
            {"name": "c", "folder": "/results", "tls_ca": "/ca.pem"}]})
    text = "\n".join(error.value.problems)
    assert len(error.value.problems) == 3, text
    assert "destinations[0]: tls_cert and tls_key must be given together" in text
    assert "destinations[1]: tls_cert and tls_key need tls_ca" in text
    assert "destinations[2]: tls_ca, tls_cert and tls_key do not apply to a folder" in text


def test_check_config_refuses_tls_files_that_do_not_exist(tmp_path: Path, capsys, pki):
    config = tls_config(
        tmp_path,
        {"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_ca": tmp_path / "no-ca.pem"},
        {"tls_ca": tmp_path / "no-pacs-ca.pem"})
    load_settings(config)  # the schema alone cannot know: the files are checked at start-up
    problems = check_config_errors(config, capsys)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"  - security.tls_ca: cannot read '{tmp_path / 'no-ca.pem'}'")
    assert "No such file or directory" in problems[0]
    assert problems[1].startswith("  - destinations[0].tls_ca: cannot read")


def test_check_config_refuses_a_certificate_with_another_key_and_a_ca_that_is_no_ca(
        tmp_path: Path, capsys, pki):
    config = tls_config(
        tmp_path, {"tls_cert": pki.server_cert, "tls_key": pki.client_key, "tls_ca": pki.ca_cert},
        {"tls_ca": pki.server_key, "tls_cert": pki.client_cert, "tls_key": pki.client_key})
    problems = check_config_errors(config, capsys)
    assert len(problems) == 2, problems
    assert problems[0].startswith("  - security.tls_cert / tls_key: does not load")
    assert "KEY_VALUES_MISMATCH" in problems[0]
    assert problems[1].startswith("  - destinations[0].tls_ca: does not load")


def test_check_config_accepts_working_tls_files(tmp_path: Path, capsys, pki):
    config = tls_config(
        tmp_path, {"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_ca": pki.ca_cert},
        {"tls_ca": pki.ca_cert, "tls_cert": pki.client_cert, "tls_key": pki.client_key})
    assert main(["check-config", "--config", str(config)]) == 0
    assert f"destinations[0].tls_ca = '{pki.ca_cert}'" in capsys.readouterr().out


def test_serve_refuses_to_start_with_a_tls_file_that_does_not_exist(tmp_path: Path, capsys,
                                                                    monkeypatch, pki):
    import theranode.service.app

    def node_must_not_start(*args, **kwargs):
        raise AssertionError("serve started a node whose CA file does not exist")

    monkeypatch.setattr(theranode.service.app, "Node", node_must_not_start)
    config = tls_config(tmp_path, {"tls_cert": pki.server_cert, "tls_key": pki.server_key,
                                   "tls_ca": tmp_path / "no-ca.pem"})
    assert main(["serve", "--config", str(config)]) == 2
    assert "security.tls_ca: cannot read" in capsys.readouterr().err


def test_the_uncertainty_defaults_are_the_engines_and_reach_it_as_fractions():
    from theranode.dosimetry.uncertainty import UncertaintyInputs
    from theranode.service.jobs.engine_settings import build_engine_settings

    assert build_engine_settings(load_settings()).uncertainty == UncertaintyInputs()
    engine = build_engine_settings(settings_from_dict(
        {"uncertainty": {"calibration_percent": 3.0, "registration_sd_mm": 1.5}}))
    assert (engine.uncertainty.calibration_relative, engine.uncertainty.registration_sd_mm) == (
        0.03, 1.5)


def test_an_uncertainty_given_as_a_fraction_of_a_hundred_is_refused(tmp_path: Path, capsys):
    config = tmp_path / "u.toml"
    config.write_text("[uncertainty]\ncalibration_percent = 100.0\nregistration_sd_mm = -1.0\n")
    errors = check_config_errors(config, capsys)
    assert any("uncertainty.calibration_percent" in e and "[0, 100)" in e for e in errors)
    assert any("uncertainty.registration_sd_mm" in e for e in errors), errors
