"""The node's logging set-up."""

from __future__ import annotations

import logging

from pynetdicom import _config as pynetdicom_config

from theranode.config.schema import LoggingSettings
from theranode.service.logs import configure_logging


def test_pynetdicom_is_kept_to_warnings_and_its_per_message_handlers_are_not_bound(
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setattr(pynetdicom_config, "LOG_HANDLER_LEVEL", "standard")
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("pynetdicom").level)
    try:
        configure_logging(LoggingSettings(level="DEBUG"))
        assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.WARNING
        assert pynetdicom_config.LOG_HANDLER_LEVEL == "none"
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("pynetdicom").setLevel(saved[2])
