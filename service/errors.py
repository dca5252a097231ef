"""Errors raised by the service layer: one hierarchy, messages an operator can act on.

::

    ServiceError
    ├── StartupError            the node cannot start (port in use, data folder unwritable)
    ├── ArchiveError            a received file cannot be stored (receive.archive)
    │   └── DiskFullError       the disk is below [security] min_free_disk_mb
    ├── SeriesOwnerError        a series UID already belongs to another patient (store.index)
    ├── JobPayloadError         a job's stored inputs cannot be read (jobs.payload)
    ├── StoredResultError       a stored result cannot be read (jobs.results)
    ├── PipelineError           a job's inputs cannot be turned into results
    │   └── ImplausibleResultError   a result outside physical plausibility: held, not sent
    └── DemoError               `theranode demo` cannot go on (service.cli.demo)

Errors of the layers below keep their own roots
(:class:`theranode.dicomio.errors.DicomInputError`,
:class:`theranode.dosimetry.errors.DosimetryError`); configuration problems
raise :class:`theranode.config.schema.ConfigError`.
"""


class ServiceError(Exception):
    """Base class of errors raised in :mod:`theranode.service`."""


class StartupError(ServiceError):
    """The node cannot start with the given settings."""


class PipelineError(ServiceError):
    """The inputs of a job cannot be turned into results (the message says why)."""


class ImplausibleResultError(PipelineError):
    """A computed result is outside physical plausibility: held, nothing is sent."""


class DemoError(ServiceError):
    """``theranode demo`` cannot go on (the message says why and what to do)."""
