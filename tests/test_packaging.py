"""What installing theranode puts into site-packages: one import name, ``theranode``.

The repository keeps the design card's top-level folders (``service/``,
``dosimetry/``, ``dicomio/``, ``config/``); ``pyproject.toml`` maps each to a
subpackage of ``theranode``. Generic top-level names such as ``config`` or
``service`` would collide with unrelated PyPI packages, and pip lets one
silently overwrite the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("service", "dosimetry", "dicomio", "config")
#: What the wheel is built from (the Dockerfile copies the same into the image).
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE")


def packages_in_tree() -> set[str]:
    found = {"theranode"}
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join(("theranode", *init.parent.relative_to(ROOT).parts)))
    return found


def test_every_package_in_the_tree_is_listed_for_installation():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["packages"]) == packages_in_tree()
    assert {name: setuptools["package-dir"][f"theranode.{name}"] for name in FOLDERS} == {
        name: name for name in FOLDERS}


def test_no_module_imports_the_old_top_level_names():
    old = tuple(f"{prefix} {name}" for prefix in ("from", "import") for name in FOLDERS)
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in (*FOLDERS, "tests", "benchmarks", "theranode")
        for path in (ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip().startswith(old)
        and line.strip().split()[1].split(".")[0] in FOLDERS
    ]
    assert offenders == []


def test_the_dockerfile_copies_everything_the_wheel_is_built_from():
    copied = {
        source.rstrip("/")
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    assert {*BUILD_FILES, *FOLDERS, "theranode"} <= copied


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (pip builds in the source tree)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, source / name)
    for folder in (*FOLDERS, "theranode"):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("theranode-*.whl")
    return found


def test_the_wheel_installs_only_theranode(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"theranode"}
    for folder in FOLDERS:
        for source in (ROOT / folder).rglob("*.py"):
            assert f"theranode/{source.relative_to(ROOT).as_posix()}" in names
    assert "theranode/config/theranode.toml" in names
    assert "theranode/py.typed" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "theranode = theranode.service.cli.main:main" in text


def test_the_installed_wheel_runs_from_its_own_files(wheel, tmp_path):
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # pip puts the console script into bin/; everything importable is under theranode/.
    installed_names = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed_names - {"bin"} == {"theranode"}
    probe = (
        "import theranode.service.cli.main as m, theranode.config.schema as s; "
        "print(m.__file__); print(s.DEFAULT_CONFIG_PATH.is_file())"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(target)}, timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    module_file, config_found = ran.stdout.split()
    assert Path(module_file).is_relative_to(target)
    assert config_found == "True"
