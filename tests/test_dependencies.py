"""The lock files pin what pyproject.toml asks for, every package with its hashes (issue #12
item 13): `./run` and the Dockerfile install only from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+) \\$")


def pinned(lock: str) -> dict[str, tuple[Version, int]]:
    """name → (version, number of sha256 hashes) of every pin in a lock file."""
    pins: dict[str, tuple[Version, int]] = {}
    name = ""
    for line in (ROOT / lock).read_text().splitlines():
        match = PIN.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            pins[name] = (Version(match.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{lock}: not a pin with hashes: {line!r}")
    return pins


def requirements(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    if extra:
        wanted += project["optional-dependencies"][extra]
    return [Requirement(r) for r in wanted]


@pytest.mark.parametrize(("lock", "extra"), [("requirements.lock", None),
                                             ("requirements-test.lock", "test")])
def test_every_dependency_is_pinned_within_its_bounds_with_hashes(lock: str, extra: str | None):
    pins = pinned(lock)
    for requirement in requirements(extra):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} does not pin {name}; run ./run lock"
        version, hashes = pins[name]
        assert requirement.specifier.contains(version), (
            f"{lock} pins {name}=={version}, outside pyproject.toml's {requirement}; "
            "run ./run lock --upgrade-package " + name)
    assert all(hashes for _, hashes in pins.values()), f"{lock}: a pin without hashes"


def test_pydicom_is_past_the_fileset_path_traversal():
    """CVE-2026-32711 / GHSA-v856-2rf8-9f28: pydicom 2.0-3.0.1."""
    for lock in ("requirements.lock", "requirements-test.lock"):
        assert pinned(lock)["pydicom"][0] >= Version("3.0.2")
    (pydicom,) = [r for r in requirements(None) if r.name == "pydicom"]
    assert not pydicom.specifier.contains("3.0.1")


def test_run_and_the_dockerfile_install_from_the_locks():
    run = (ROOT / "run").read_text()
    assert '--require-hashes -r "$1"' in run and "--no-deps -e ." in run
    assert "python_env requirements.lock" in run and "python_env requirements-test.lock" in run
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
