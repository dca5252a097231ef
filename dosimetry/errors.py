"""Errors raised by the dosimetry engine.

::

    DosimetryError
    ├── GeometryError        volumes on incompatible grids, empty masks
    ├── FitError             a time-activity curve that no model can describe
    ├── RegistrationError    rigid CT-to-CT registration did not converge
    └── InsufficientDataError  too few time points / patients for a method
"""


class DosimetryError(Exception):
    """Base class of every error raised in :mod:`dosimetry`."""


class GeometryError(DosimetryError):
    """Volumes or masks do not share the geometry an operation needs."""


class FitError(DosimetryError):
    """A kinetic model could not be fitted to the measured curve."""


class RegistrationError(DosimetryError):
    """Rigid registration failed or produced an implausible transform."""


class InsufficientDataError(DosimetryError):
    """The data are too few for the requested method."""
