"""The house style's type checking: mypy strict on the pure packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dosimetry_and_dicomio_pass_mypy_strict():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "dosimetry", "dicomio"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
