"""Errors raised while reading or writing DICOM.

::

    DicomInputError
    ├── MissingAttributeError   a required attribute is absent or empty
    ├── UnsupportedObjectError  SOP class / modality / units theranode cannot use
    ├── InconsistentSeriesError slices or frames that do not form one volume
    ├── TruncatedObjectError    an element or the pixel data shorter than declared
    ├── InconsistentPixelDataError  pixel dimensions that do not describe the pixels
    └── InvalidOutputError      an object theranode was about to write breaks PS3.5
"""


class DicomInputError(Exception):
    """Base class of every error raised in :mod:`dicomio`."""


class MissingAttributeError(DicomInputError):
    """A required DICOM attribute is missing or empty."""


class UnsupportedObjectError(DicomInputError):
    """The object is of a kind theranode does not process."""


class InconsistentSeriesError(DicomInputError):
    """The instances of a series do not form one regular volume."""


class TruncatedObjectError(DicomInputError):
    """An element value, or the pixel data, is shorter than declared (a cut object)."""


class InconsistentPixelDataError(DicomInputError):
    """The image dimensions are impossible or do not match the pixel data's length."""


class InvalidOutputError(DicomInputError):
    """An object theranode was about to write breaks PS3.5; it was not written."""
