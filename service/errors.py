"""Errors raised by the service layer.

::

    ServiceError
    └── StartupError     the node cannot start (port in use, data folder unwritable)

Configuration problems raise :class:`theranode.config.schema.ConfigError`.
"""


class ServiceError(Exception):
    """Base class of errors raised in :mod:`service`."""


class StartupError(ServiceError):
    """The node cannot start with the given settings."""
