"""A PDF's text as a reader gets it: poppler's ``pdftotext``, whitespace collapsed.

The reports embed their fonts as TrueType subsets, whose strings are glyph codes,
so the text is read the way a viewer reads it rather than out of the content streams.
"""

from __future__ import annotations

import re
import subprocess

from tests.peers import require_tool


def pdf_text(pdf: bytes) -> str:
    """Every page's text of ``pdf``, runs of whitespace collapsed to one space."""
    run = subprocess.run([require_tool("pdftotext"), "-", "-"], input=pdf, capture_output=True,
                         timeout=60, check=True)
    return re.sub(r"\s+", " ", run.stdout.decode("utf-8"))
