"""Stored strings made safe to print on an operator's terminal.

PatientIDs, code meanings, ROI names, failure reasons and log lines reach
``theranode status``, ``jobs``, ``demo`` and ``check-config`` from DICOM
objects and files a peer sent. A terminal obeys the control characters in
them: ESC starts an ANSI/ECMA-48 control sequence (``ESC [ 2 J`` clears the
screen), a newline or carriage return starts a forged line. Every CLI view
prints its lines through :func:`terminal_text`, which shows each character
Python does not consider printable (C0 and C1 controls, DEL, format
characters such as the bidirectional overrides, line and paragraph
separators) as an escape: ``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u202e``.
Printable text, ``Müller`` included, is left as it is, and so is the
backslash, so an escaped line is unchanged when escaped again.

References
----------
ECMA-48 (5th ed., 1991), Control Functions for Coded Character Sets, 5.3-5.4
(control sequences introduced by ESC). The Unicode Standard, 4.5 General
Category (Cc, Cf, Zl, Zp: the characters :meth:`str.isprintable` refuses).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(character: str) -> str:
    named = _NAMED.get(character)
    if named is not None:
        return named
    code = ord(character)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def terminal_text(value: object) -> str:
    """``str(value)`` with every non-printable character shown as an escape, on one line."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def terminal_lines(lines: Iterable[object]) -> Iterator[str]:
    """Each line through :func:`terminal_text`."""
    for line in lines:
        yield terminal_text(line)


def emit(*lines: object, file: TextIO | None = None) -> None:
    """Print ``lines`` for the operator, escaped by :func:`terminal_text`.

    A line may hold the breaks the program put between lines (``"\\n"``), as
    the demo's paragraphs do; split there, each part is escaped on its own.
    """
    for line in lines:
        for part in str(line).split("\n"):
            print(terminal_text(part), file=file or sys.stdout)
