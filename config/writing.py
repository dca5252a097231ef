"""Settings written back as a configuration file that ``load_settings`` reads.

``theranode demo`` writes its temporary node's configuration with
:func:`settings_toml`; :func:`toml_value` is one value in TOML form.

References
----------
TOML v1.0.0 (https://toml.io/en/v1.0.0): strings, integers, floats (``inf``,
``nan``), booleans, arrays, tables and arrays of tables.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any

from theranode.config.schema import LIST_SECTIONS, NESTED_TABLES, SECTIONS, Settings


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):  # JSON's escapes are TOML's; DEL must be escaped in TOML
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_table(header: str, record: Any) -> Iterator[str]:
    yield header
    nested = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if (type(record), f.name) in NESTED_TABLES:
            nested.append((f.name, value))
        else:
            yield f"{f.name} = {toml_value(value)}"
    name = header.strip("[]")
    for key, items in nested:
        for item in items:
            yield from _toml_table(f"[[{name}.{key}]]", item)


def settings_toml(settings: Settings, comment: str) -> str:
    """``settings`` as a TOML document that :func:`~theranode.config.schema.load_settings`
    reads back to the same values, headed by ``comment`` (a TOML comment line)."""
    lines = [f"# {comment}"]
    for section in SECTIONS:
        lines += ["", *_toml_table(f"[{section}]", getattr(settings, section))]
    for section in LIST_SECTIONS:
        for item in getattr(settings, section):
            lines += ["", *_toml_table(f"[[{section}]]", item)]
    return "\n".join(lines) + "\n"
