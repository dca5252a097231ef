"""Errors raised while reading or writing DICOM.

::

    DicomInputError
    ├── MissingAttributeError   a required attribute is absent or empty
    ├── UnsupportedObjectError  SOP class / modality / units theranode cannot use
    └── InconsistentSeriesError slices or frames that do not form one volume
"""


class DicomInputError(Exception):
    """Base class of every error raised in :mod:`dicomio`."""


class MissingAttributeError(DicomInputError):
    """A required DICOM attribute is missing or empty."""


class UnsupportedObjectError(DicomInputError):
    """The object is of a kind theranode does not process."""


class InconsistentSeriesError(DicomInputError):
    """The instances of a series do not form one regular volume."""
