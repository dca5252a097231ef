"""The node's clock: naive UTC, the form every timestamp in the database takes.

Every stored date-time (instance arrival, job start and end, outbox retries)
is UTC without a time zone, so that SQLite compares them as text in time
order. Components take the clock as a parameter (default :func:`utc_now`) so
tests can drive time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from theranode.service.errors import StartupError


def utc_now() -> datetime:
    """The current time in UTC, without tzinfo."""
    return datetime.now(UTC).replace(tzinfo=None)


#: A clock this far from the database server's is worth a warning (s).
CLOCK_WARNING_S = 2.0


def check_clock_offset(offset_s: float, quiet_period_s: float) -> str | None:
    """Judge this machine's clock against the shared database server's.

    Nodes that share a database compare times one of them wrote with their own clock: a
    cycle is computed once ``[protocol] quiet_period_s`` have passed since the last
    instance of its series, as stamped by whichever node received it. A clock off by
    half the quiet period or more could start a cycle while its series still arrive (or
    hold it back as long), so the node refuses to start; a smaller offset above
    :data:`CLOCK_WARNING_S` is returned as a warning to log.

    Raises
    ------
    StartupError
        The offset is at least half the quiet period (and at least the warning level).
    """
    if abs(offset_s) < CLOCK_WARNING_S:
        return None
    direction = "ahead of" if offset_s > 0 else "behind"
    message = (f"This machine's clock is {abs(offset_s):.1f} s {direction} the database "
               "server's; every node and worker must keep time by NTP (chrony, "
               "systemd-timesyncd)")
    if abs(offset_s) >= max(CLOCK_WARNING_S, quiet_period_s / 2):
        raise StartupError(
            f"{message}. Nodes judge when a cycle is complete by the arrival times other "
            f"nodes wrote, and [protocol] quiet_period_s is {quiet_period_s:g} s: set the "
            "clock right, then start the node again.")
    return message
