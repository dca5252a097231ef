"""Reading written DICOM bytes back, for tests of what theranode writes."""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.dataset import Dataset


def read_back(data: bytes) -> Dataset:
    """The dataset a DICOM reader gets from PS3.10 file bytes."""
    return pydicom.dcmread(BytesIO(data))
