"""Result records ⇄ plain JSON values, by an explicit registry of record types.

Results are stored as JSON (and their arrays as ``.npy`` files beside it,
:mod:`theranode.service.jobs.results`), never by Python's object serialisation:
reading that runs whatever code the file names, and a renamed class breaks
every stored file.
:class:`RecordCodec` converts a frozen dataclass of its registry to a plain
JSON value and back. The *declared type* of each field (its annotation)
decides how the field is read, never the file: a class outside the registry
is refused, so a file cannot name what gets built.

Encoding, field by field:

- a registered dataclass → an object with exactly its fields (a missing or
  extra key is refused on reading);
- an enum → its value; ``X | None`` → ``null`` or X; ``tuple`` → an array;
  ``dict`` → an array of ``[key, value]`` pairs (keys may be ints);
- a float → a JSON number, or ``{"$float": "nan" | "inf" | "-inf"}`` (JSON
  has no NaN or infinity, RFC 8259 section 6);
- a numpy array → ``{"$array": key, "dtype": …, "shape": […]}`` and the
  array handed to the caller's ``store(key, array)``; boolean arrays (VOI
  masks) are stored as packed bits (8× smaller) and unpacked exactly;
- a field typed ``object`` or ``Any`` (a result's settings echo, a volume's
  metadata) → JSON scalars and lists as they are, tuples and dicts tagged
  (``{"$tuple": […]}``, ``{"$dict": {…}}``) so that they come back as they were.

No file is read or written here (:mod:`dosimetry` does no I/O): the caller
supplies ``store`` and ``load``.

References
----------
IETF RFC 8259, The JavaScript Object Notation (JSON) Data Interchange Format.
NumPy Enhancement Proposal 1, A simple file format for NumPy arrays (``.npy``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.results import (
    CourseResult,
    CumulativeDose,
    CurvePoint,
    CycleResult,
    DoseUncertainty,
    KineticFit,
    LesionIndices,
    MapVoi,
    RegistrationQuality,
    VoiDose,
)
from theranode.dosimetry.volume import Volume

#: ``store(key, array)``: keep an array under ``key`` (the caller writes it somewhere).
ArrayStore = Callable[[str, npt.NDArray[Any]], None]
#: ``load(key, dtype, shape)``: the array stored under ``key``, checked against both.
ArrayLoad = Callable[[str, np.dtype[Any], tuple[int, ...]], npt.NDArray[Any]]

#: Array keys are built from field names and indices: safe as file names.
ARRAY_KEY = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
#: Array element kinds a stored array may have (bool, ints, floats; never objects).
ARRAY_KINDS = frozenset("biuf")

_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class RecordFormatError(DosimetryError):
    """A stored record does not have the form its type declares (damaged or foreign file)."""


class RecordCodec:
    """Encode and decode the dataclasses of an explicit registry.

    Parameters
    ----------
    types:
        The record types this codec may build; every dataclass a field of
        one of them holds must be listed too.
    """

    def __init__(self, types: tuple[type, ...]) -> None:
        self.types = frozenset(types)
        self._hints = {cls: typing.get_type_hints(cls) for cls in types}

    # -- encoding ---------------------------------------------------------------
    def encode(self, value: object, hint: Any, key: str, store: ArrayStore) -> Any:
        """``value`` (of declared type ``hint``) as a plain JSON value; arrays go to ``store``."""
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self._encode_record(value, hint, key, store)
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            return None if value is None else self.encode(value, _optional(hint), key, store)
        if origin is tuple:
            items = _tuple_hints(hint, value)
            return [self.encode(v, h, f"{key}.{i}", store)
                    for i, (v, h) in enumerate(zip(_as(value, tuple, key), items, strict=True))]
        if origin is dict:
            key_hint, value_hint = typing.get_args(hint)
            return [[self.encode(k, key_hint, key, store),
                     self.encode(v, value_hint, f"{key}.{i}", store)]
                    for i, (k, v) in enumerate(_as(value, dict, key).items())]
        if origin is np.ndarray:
            return _encode_array(value, key, store)
        return _encode_scalar(value, hint, key)

    def _encode_record(self, value: object, cls: type, key: str, store: ArrayStore) -> Any:
        self._registered(cls, key)
        if not isinstance(value, cls):
            raise RecordFormatError(
                f"{key}: expected a {cls.__name__}, got {type(value).__name__}."
            )
        return {f.name: self.encode(getattr(value, f.name), self._hints[cls][f.name],
                                    f"{key}.{f.name}", store)
                for f in dataclasses.fields(cls)}

    # -- decoding ---------------------------------------------------------------
    def decode(self, doc: Any, hint: Any, key: str, load: ArrayLoad) -> Any:
        """The value of declared type ``hint`` that ``doc`` encodes; arrays come from ``load``."""
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self._decode_record(doc, hint, key, load)
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            return None if doc is None else self.decode(doc, _optional(hint), key, load)
        if origin is tuple:
            items = _tuple_hints(hint, _as(doc, list, key))
            return tuple(self.decode(v, h, f"{key}.{i}", load)
                         for i, (v, h) in enumerate(zip(doc, items, strict=True)))
        if origin is dict:
            key_hint, value_hint = typing.get_args(hint)
            return {self.decode(_pair(p, key)[0], key_hint, key, load):
                    self.decode(_pair(p, key)[1], value_hint, f"{key}.{i}", load)
                    for i, p in enumerate(_as(doc, list, key))}
        if origin is np.ndarray:
            return _decode_array(doc, key, load)
        return _decode_scalar(doc, hint, key)

    def _decode_record(self, doc: Any, cls: type, key: str, load: ArrayLoad) -> Any:
        self._registered(cls, key)
        names = [f.name for f in dataclasses.fields(cls)]
        fields = _as(doc, dict, key)
        if set(fields) != set(names):
            missing, extra = sorted(set(names) - set(fields)), sorted(set(fields) - set(names))
            raise RecordFormatError(
                f"{key}: a {cls.__name__} has the fields {names}; missing {missing}, "
                f"unknown {extra}."
            )
        try:
            return cls(**{n: self.decode(fields[n], self._hints[cls][n], f"{key}.{n}", load)
                          for n in names})
        except DosimetryError as exc:  # a Volume's own checks (e.g. a 2-D array)
            if isinstance(exc, RecordFormatError):
                raise
            raise RecordFormatError(f"{key}: {exc}") from exc

    def _registered(self, cls: type, key: str) -> None:
        if cls not in self.types:
            raise RecordFormatError(
                f"{key}: {cls.__name__} is not a record type this codec stores."
            )


    # -- older versions -----------------------------------------------------------
    def with_added_fields(
        self, doc: Any, hint: Any, added: Mapping[type, Mapping[str, Any]]
    ) -> Any:
        """``doc`` (encoded as ``hint``) with the fields ``added`` names filled in where absent.

        A record type that gained fields after documents were stored reads
        those documents through this: ``added`` maps each record type to its
        new fields and the encoded value every earlier document meant (the
        field's default). Present keys are kept; the strict reading that
        follows still refuses anything else missing or unknown.
        """
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(doc, dict):
            doc = {**{k: v for k, v in added.get(hint, {}).items() if k not in doc}, **doc}
            hints = self._hints.get(hint, {})
            return {k: self.with_added_fields(v, hints[k], added) if k in hints else v
                    for k, v in doc.items()}
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            return None if doc is None else self.with_added_fields(doc, _optional(hint), added)
        if origin is tuple and isinstance(doc, list):
            items = _tuple_hints(hint, doc)
            return [self.with_added_fields(v, h, added) for v, h in zip(doc, items, strict=True)]
        if origin is dict and isinstance(doc, list):
            value_hint = typing.get_args(hint)[1]
            return [[p[0], self.with_added_fields(p[1], value_hint, added)]
                    if isinstance(p, list) and len(p) == 2 else p for p in doc]
        return doc


# -- helpers ------------------------------------------------------------------------
def _optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) != 1:
        raise RecordFormatError(f"Only 'X | None' unions are stored, not {hint}.")
    return args[0]


def _tuple_hints(hint: Any, value: Any) -> list[Any]:
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * len(value)
    if len(args) != len(value):
        raise RecordFormatError(f"Expected {len(args)} items, found {len(value)}.")
    return list(args)


def _as(value: Any, kind: type, key: str) -> Any:
    if not isinstance(value, kind):
        raise RecordFormatError(
            f"{key}: expected a {kind.__name__}, found {type(value).__name__}."
        )
    return value


def _pair(doc: Any, key: str) -> list[Any]:
    pair: list[Any] = _as(doc, list, key)
    if len(pair) != 2:
        raise RecordFormatError(f"{key}: expected [key, value] pairs, found {doc!r:.80}.")
    return pair


def encode_float(value: float) -> Any:
    """A float as JSON: a number, or ``{"$float": "nan" | "inf" | "-inf"}``."""
    value = float(value)
    if math.isnan(value):
        return {"$float": "nan"}
    if math.isinf(value):
        return {"$float": "inf" if value > 0 else "-inf"}
    return value


def decode_float(doc: Any, key: str) -> float:
    """The float :func:`encode_float` wrote (ints accepted, booleans refused)."""
    if isinstance(doc, dict) and set(doc) == {"$float"} and doc["$float"] in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[doc["$float"]]
    if isinstance(doc, bool) or not isinstance(doc, int | float):
        raise RecordFormatError(f"{key}: expected a number, found {doc!r:.80}.")
    return float(doc)


def _encode_scalar(value: Any, hint: Any, key: str) -> Any:
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _as(value, hint, key).value
    if hint is float:
        return encode_float(value)
    if hint in (int, str, bool):
        if isinstance(value, np.integer | np.bool_):  # numpy scalars from the engine
            value = value.item()
        if isinstance(value, bool) != (hint is bool):
            raise RecordFormatError(f"{key}: expected {hint.__name__}, got {value!r:.80}.")
        return _as(value, hint, key)
    if hint in (object, Any):
        return encode_value(value, key)
    raise RecordFormatError(f"{key}: fields of type {hint} are not stored.")


def _decode_scalar(doc: Any, hint: Any, key: str) -> Any:
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(doc)
        except ValueError:
            raise RecordFormatError(
                f"{key}: {doc!r:.80} is not a {hint.__name__} "
                f"(one of {[m.value for m in hint]})."
            ) from None
    if hint is float:
        return decode_float(doc, key)
    if hint in (int, str, bool):
        if isinstance(doc, bool) != (hint is bool) or not isinstance(doc, hint):
            raise RecordFormatError(f"{key}: expected {hint.__name__}, found {doc!r:.80}.")
        return doc
    if hint in (object, Any):
        return decode_value(doc, key)
    raise RecordFormatError(f"{key}: fields of type {hint} are not stored.")


def encode_value(value: Any, key: str = "value") -> Any:
    """A free-form value (settings echo, metadata) as JSON, tuples and dicts tagged."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, float | np.floating):
        return encode_float(float(value))
    if isinstance(value, list):
        return [encode_value(v, key) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(v, key) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$dict": {k: encode_value(v, f"{key}.{k}") for k, v in value.items()}}
    raise RecordFormatError(
        f"{key}: a {type(value).__name__} cannot be stored in a free-form field (only "
        "None, bool, int, float, str, lists, tuples and dicts with text keys)."
    )


def decode_value(doc: Any, key: str = "value") -> Any:
    """The free-form value :func:`encode_value` wrote."""
    if doc is None or isinstance(doc, bool | int | float | str):
        return doc
    if isinstance(doc, list):
        return [decode_value(v, key) for v in doc]
    if isinstance(doc, dict) and len(doc) == 1:
        (tag, body), = doc.items()
        if tag == "$float":
            return decode_float(doc, key)
        if tag == "$tuple" and isinstance(body, list):
            return tuple(decode_value(v, key) for v in body)
        if tag == "$dict" and isinstance(body, dict):
            return {k: decode_value(v, f"{key}.{k}") for k, v in body.items()}
    raise RecordFormatError(f"{key}: {doc!r:.80} is not a stored value.")


def _encode_array(value: Any, key: str, store: ArrayStore) -> Any:
    array = np.asarray(_as(value, np.ndarray, key))
    if array.dtype.kind not in ARRAY_KINDS or not ARRAY_KEY.match(key):
        raise RecordFormatError(f"{key}: arrays of dtype {array.dtype} are not stored.")
    doc = {"$array": key, "dtype": array.dtype.str, "shape": list(array.shape)}
    if array.dtype == np.bool_:
        store(key, np.packbits(array, axis=None))
        return {**doc, "packed_bits": True}
    store(key, np.ascontiguousarray(array))
    return doc


def _decode_array(doc: Any, key: str, load: ArrayLoad) -> npt.NDArray[Any]:
    fields = _as(doc, dict, key)
    name, shape = fields.get("$array"), fields.get("shape")
    if (not isinstance(name, str) or not ARRAY_KEY.match(name)
            or not isinstance(shape, list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                       for n in shape)):
        raise RecordFormatError(f"{key}: {doc!r:.120} is not a stored array.")
    try:
        dtype = np.dtype(str(fields.get("dtype")))
    except TypeError:
        raise RecordFormatError(f"{key}: unknown dtype {fields.get('dtype')!r:.40}.") from None
    if dtype.kind not in ARRAY_KINDS:
        raise RecordFormatError(f"{key}: arrays of dtype {dtype} are not stored.")
    if fields.get("packed_bits") is True and dtype == np.bool_:
        count = math.prod(shape)
        packed = load(name, np.dtype(np.uint8), ((count + 7) // 8,))
        return np.unpackbits(packed, count=count).astype(bool).reshape(shape)
    return load(name, dtype, tuple(shape))


#: Every record type of a cycle or course result (:mod:`theranode.dosimetry.results`,
#: :class:`Volume`).
RESULT_TYPES: tuple[type, ...] = (
    CycleResult, CourseResult, VoiDose, KineticFit, CurvePoint, RegistrationQuality,
    CumulativeDose, LesionIndices, MapVoi, Volume, DoseUncertainty,
)
RESULT_CODEC = RecordCodec(RESULT_TYPES)


def record_to_json(value: object, cls: type, key: str, store: ArrayStore) -> Any:
    """A result record (or :class:`Volume`) of type ``cls`` as a plain JSON value."""
    return RESULT_CODEC.encode(value, cls, key, store)


def record_from_json(doc: Any, cls: type, key: str, load: ArrayLoad) -> Any:
    """The result record of type ``cls`` that ``doc`` encodes (arrays from ``load``)."""
    return RESULT_CODEC.decode(doc, cls, key, load)


def check_format(doc: Any, what: str, format_name: str, version: int) -> Mapping[str, Any]:
    """The body of a versioned document, or a clear refusal.

    A document is ``{"format": format_name, "version": n, …}``; versions
    other than ``version`` are refused (a newer one with the advice to
    upgrade theranode).
    """
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        raise RecordFormatError(
            f"{what} is not a {format_name} document (its 'format' is "
            f"{doc.get('format') if isinstance(doc, dict) else None!r:.40}); it was damaged or "
            "written by something else. Reprocess the patient to compute it again."
        )
    found = doc.get("version")
    if isinstance(found, int) and not isinstance(found, bool) and found > version:
        raise RecordFormatError(
            f"{what} format version {found} is newer than this theranode understands "
            f"({version}); upgrade theranode."
        )
    if found != version:
        raise RecordFormatError(
            f"{what} format version {found!r:.20} is not one this theranode reads ({version}); "
            "the file was damaged. Reprocess the patient to compute it again."
        )
    return doc
