"""The node's clock: naive UTC, the form every timestamp in the database takes.

Every stored date-time (instance arrival, job start and end, outbox retries)
is UTC without a time zone, so that SQLite compares them as text in time
order. Components take the clock as a parameter (default :func:`utc_now`) so
tests can drive time.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time in UTC, without tzinfo."""
    return datetime.now(UTC).replace(tzinfo=None)
