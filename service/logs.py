"""Logging set-up, done once by the command line (never at import time).

:func:`configure_logging` is process-wide by nature: it replaces the root
logger's handlers, caps the ``pynetdicom`` logger at WARNING, and sets
pynetdicom's ``LOG_HANDLER_LEVEL`` to ``"none"`` so that no association in
the process binds pynetdicom's per-message logging handlers. That setting
lives in ``pynetdicom._config``, which despite its name is pynetdicom's
documented configuration module ("Configuration Options
(pynetdicom._config)" in its API reference, which shows this very
assignment); pynetdicom offers no other way to set it. ``theranode serve``
calls it once, before the node starts; a listener process, which logs
through the node, sets the pynetdicom part alone (:func:`quiet_pynetdicom`).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from pynetdicom import _config as pynetdicom_config

from theranode.config.schema import LoggingSettings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s"


def configure_logging(settings: LoggingSettings) -> None:
    """Send theranode's log to standard error and, if configured, a daily file."""
    root = logging.getLogger()
    root.setLevel(settings.level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.file:
        _create_private(settings.file)
        handlers.append(
            logging.handlers.TimedRotatingFileHandler(
                settings.file, when="midnight", backupCount=14, encoding="utf-8"
            )
        )
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    quiet_pynetdicom(root.level)


def quiet_pynetdicom(level: int) -> None:
    """Keep pynetdicom's per-PDU and per-association logging out of a process's log.

    Every process that receives (the node, its listener processes) calls it
    once, before it makes a server or an association.
    """
    # pynetdicom logs every PDU at DEBUG and each association at INFO; keep
    # its INFO lines out of ours (we log one line per association ourselves).
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, level))
    # With its logger capped at WARNING, pynetdicom's standard event handlers
    # only waste time: they format a summary of every PDU and DIMSE message
    # (and copy each C-STORE data set to see that it is not empty) before the
    # logger drops it. They log nothing above INFO, so nothing is lost. Read
    # when a server or an association is made: set before the node starts.
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"


def _create_private(path: str) -> None:
    """Make the log file readable by its owner only (0600), before the handler opens it.

    The log names no patient, but it holds pseudonymous keys, UIDs and peers'
    addresses. Rotated files are made by the handler under the process umask,
    which the command line sets to 077.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
