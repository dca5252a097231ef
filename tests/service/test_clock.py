"""A node's clock against the shared database server's (service/clock.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.nodes import make_settings
from theranode.service import app
from theranode.service.app import Node
from theranode.service.clock import check_clock_offset
from theranode.service.errors import StartupError
from theranode.service.store import open_database
from theranode.service.store.database import clock_offset_s


def test_a_clock_within_two_seconds_of_the_servers_passes_silently() -> None:
    assert check_clock_offset(1.5, quiet_period_s=30) is None
    assert check_clock_offset(-1.5, quiet_period_s=30) is None


def test_a_clock_a_few_seconds_off_is_worth_a_warning_that_says_which_way() -> None:
    warning = check_clock_offset(4.0, quiet_period_s=30)
    assert warning is not None
    assert "4.0 s ahead of the database server's" in warning
    assert "NTP" in warning
    assert "behind" in str(check_clock_offset(-4.0, quiet_period_s=30))


def test_a_clock_off_by_half_the_quiet_period_stops_the_node_with_the_reason() -> None:
    with pytest.raises(StartupError, match=r"20\.0 s behind .* quiet_period_s is 30 s"):
        check_clock_offset(-20.0, quiet_period_s=30)
    with pytest.raises(StartupError):
        check_clock_offset(15.0, quiet_period_s=30)
    assert check_clock_offset(14.0, quiet_period_s=30) is not None  # a warning only


def test_the_offset_from_a_server_on_this_machine_is_near_zero(database_url: str) -> None:
    db = open_database(database_url)
    try:
        offset = clock_offset_s(db)
    finally:
        db.close()
    assert abs(offset) < 0.5
    assert check_clock_offset(offset, quiet_period_s=30) is None


def test_a_node_whose_clock_is_off_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "clock_offset_s", lambda db: 45.0)
    node = Node(make_settings(tmp_path / "data"))
    with pytest.raises(StartupError, match="45.0 s ahead"):
        node.start()
