"""Value representations theranode writes itself.

pydicom writes a Python float into a Decimal String (DS) as ``repr`` would,
e.g. ``14.399999999999999``: 18 characters where DS allows 16, which
dciodvfy rejects (PS3.5 Table 6.2-1; docs/interoperability.md). Every DS
theranode writes goes through :func:`format_ds` instead.

References
----------
DICOM PS3.5 6.2 (Value Representations: DS, at most 16 bytes, characters
``0-9 + - E e .`` and leading/trailing spaces).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

DS_MAX_CHARS = 16


def format_ds(value: float) -> str:
    """The closest decimal string of at most 16 characters to ``value``.

    Tries fixed and exponent notation at decreasing precision and returns
    the first that fits, so the value keeps as many significant digits as
    16 characters allow (at least 10 for any finite double).

    Raises
    ------
    ValueError
        When ``value`` is NaN or infinite: DS has no representation for them.
    """
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(
            f"A DICOM Decimal String needs a finite number, got {number!r}; "
            "check the computation that produced it."
        )
    if number == 0.0:
        return "0"
    for precision in range(17, 0, -1):
        text = _shortest(number, precision)
        if len(text) <= DS_MAX_CHARS:
            return text
    raise AssertionError(
        f"{number!r} cannot be written in 16 characters"
    )  # pragma: no cover


def _shortest(number: float, precision: int) -> str:
    """``number`` with ``precision`` significant digits, in its shorter notation."""
    general = f"{number:.{precision}g}"
    if "e" in general:
        mantissa, exponent = general.split("e")
        general = f"{mantissa}E{int(exponent)}"
    return general


def format_ds_values(values: Iterable[float]) -> list[str]:
    """:func:`format_ds` applied to each of ``values`` (a multi-valued DS)."""
    return [format_ds(v) for v in values]
