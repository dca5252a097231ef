"""The house style's type checking: mypy strict on every installed package.

mypy cannot follow the editable install's import hook, so the check runs on
the layout the wheel installs: a folder ``theranode/`` whose subpackages link
to the repository's top-level folders (the ``package-dir`` mapping of
``pyproject.toml``), checked from outside the repository so that no module is
seen under two names.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("service", "dosimetry", "dicomio", "config")


def installed_layout(into: Path) -> Path:
    package = into / "theranode"
    package.mkdir()
    for name in ("__init__.py", "py.typed"):
        shutil.copy(ROOT / "theranode" / name, package / name)
    for name in SUBPACKAGES:
        (package / name).symlink_to(ROOT / name, target_is_directory=True)
    return package


def test_every_package_passes_mypy_strict(tmp_path):
    installed_layout(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental",
         "--config-file", str(ROOT / "pyproject.toml"), "-p", "theranode"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
