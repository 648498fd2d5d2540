"""Rows as column arrays, for the `INSERT ... SELECT FROM unnest(%b::type[], ...)`
statements that write a whole batch at once, and the binary dumpers that send them.

psycopg dumps a plain `list` by first finding its element type (a pass over the list,
twice per parameter, and a new dumper for each, at every execute) and then each element
through a generic loop. `typed(statement, params)` wraps each list parameter in the array
class the statement's own cast names (`%b::uuid[]` gives `UuidArray`), whose dumper knows
its type and writes the binary array with one C-level pass where it can: about half the
time of the generic path for a batch's statement (`tests/unit/test_arrays.py` checks the
bytes are the same as psycopg's). A parameter whose cast has no class here, or that is not
a plain list, is passed as it was.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import repeat
from operator import attrgetter
from typing import Any, ClassVar, Final
from uuid import UUID

import psycopg
from psycopg import AsyncConnection, AsyncCursor, pq
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Dumper
from psycopg.postgres import types as postgres_types

__all__ = [
    "BigintArray",
    "ByteaArray",
    "TextArray",
    "TimestamptzArray",
    "UuidArray",
    "array_classes",
    "column_arrays",
    "execute_typed",
    "typed",
]

_HEAD: Final = struct.Struct(">iiIii")  # dimensions, has nulls, element oid, length, lower bound
_EMPTY: Final = struct.Struct(">iiI")
_LENGTH: Final = struct.Struct(">i").pack
_BIGINT: Final = struct.Struct(">iq").pack  # length 8, then the value
_NULL: Final = b"\xff\xff\xff\xff"


def column_arrays(rows: Sequence[object], names: Iterable[str]) -> list[list[Any]]:
    """One list per attribute name, in the order given, each in the rows' order."""
    return [list(map(attrgetter(name), rows)) for name in names]


class _ArrayDumper(Dumper):
    """A one-dimensional array of one element type, in PostgreSQL's binary array format."""

    format = pq.Format.BINARY
    element: ClassVar[str]
    element_oid: ClassVar[int]

    def dump(self, obj: list[Any]) -> bytes:
        length = len(obj)
        if not length:
            return _EMPTY.pack(0, 0, self.element_oid)
        # `all` first: it tests truth in C, and uuids, datetimes and most values are true,
        # while `None in` calls each element's `__eq__` (Python code for a UUID: 40 % of a
        # uuid array's dump). Only a false element (0, "", None) needs the exact test.
        if not all(obj) and None in obj:
            items = [_NULL if value is None else self.item(value) for value in obj]
            return _HEAD.pack(1, 1, self.element_oid, length, 1) + b"".join(items)
        return _HEAD.pack(1, 0, self.element_oid, length, 1) + self.items(obj)

    def items(self, values: list[Any]) -> bytes:
        """The values (none of them None) as length-prefixed binary elements."""
        raise NotImplementedError

    def item(self, value: Any) -> bytes:
        """One value (not None) as a length-prefixed binary element."""
        return self.items([value])


class _UuidDumper(_ArrayDumper):
    element = "uuid"
    _SIZE: ClassVar = _LENGTH(16)

    def items(self, values: list[UUID | str]) -> bytes:
        try:
            raw = [value.bytes for value in values]  # type: ignore[union-attr]
        except AttributeError:  # ids read from a message's JSON are strings
            raw = list(map(_uuid_bytes, values))
        return self._SIZE + self._SIZE.join(raw)

    def item(self, value: UUID | str) -> bytes:
        return self._SIZE + _uuid_bytes(value)


def _uuid_bytes(value: UUID | str) -> bytes:
    """A UUID's 16 bytes. Text is 32 hex digits, hyphens between them, maybe in braces (as
    PostgreSQL reads uuid input, if more freely placed hyphens); anything else is refused."""
    if isinstance(value, UUID):
        return value.bytes
    if not isinstance(value, str):
        raise TypeError(f"a uuid array takes UUIDs or their text, not {type(value).__name__}")
    if value[:1] == "{" and value[-1:] == "}":
        value = value[1:-1]
    digits = value.replace("-", "")
    # fromhex skips whitespace, so 32 characters give 16 bytes only when all are digits.
    if len(digits) == 32:
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            raw = b""
        if len(raw) == 16:
            return raw
    raise ValueError("badly formed hexadecimal UUID string")


class _BigintDumper(_ArrayDumper):
    element = "int8"

    def items(self, values: list[int]) -> bytes:
        return b"".join(map(_BIGINT, repeat(8), values))


class _TextDumper(_ArrayDumper):
    element = "text"

    def items(self, values: list[str]) -> bytes:
        try:
            encoded = [value.encode() for value in values]
        except AttributeError:
            encoded = list(map(_text_bytes, values))
        parts: list[bytes] = [b""] * (2 * len(encoded))
        parts[0::2] = map(_LENGTH, map(len, encoded))
        parts[1::2] = encoded
        return b"".join(parts)


class _ByteaDumper(_ArrayDumper):
    element = "bytea"

    def items(self, values: list[bytes]) -> bytes:
        parts: list[bytes] = [b""] * (2 * len(values))
        parts[0::2] = map(_LENGTH, map(len, values))
        parts[1::2] = values
        return b"".join(parts)


def _text_bytes(value: str | UUID | int) -> bytes:
    """A value's text as PostgreSQL would cast it to text: a UUID in its canonical form, an
    integer in decimal; other types are refused rather than guessed at."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, UUID) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value).encode()
    raise TypeError(f"a text array takes strings, UUIDs or integers, not {type(value).__name__}")


class _TimestamptzDumper(_ArrayDumper):
    """psycopg's own (C) dumper for each element: it handles time zones and the range."""

    element = "timestamptz"
    _SIZE: ClassVar = _LENGTH(8)

    def __init__(self, cls: type, context: AdaptContext | None = None):
        super().__init__(cls, context)
        adapters = context.adapters if context is not None else psycopg.adapters
        element = adapters.get_dumper_by_oid(self.element_oid, pq.Format.BINARY)
        self._dump_element: Callable[[datetime], Buffer] = element(datetime, context).dump  # type: ignore[assignment]

    def items(self, values: list[datetime]) -> bytes:
        return self._SIZE + self._SIZE.join(map(self._dump_element, values))


def _array_class(name: str, dumper: type[_ArrayDumper]) -> type[list[Any]]:
    """A list subclass dumped as `element[]`, its dumper registered for every connection."""
    info = postgres_types[dumper.element]
    array = type(name, (list,), {"__doc__": f"A list sent as PostgreSQL's {dumper.element}[]."})
    sender = type(f"{name}Dumper", (dumper,), {"oid": info.array_oid, "element_oid": info.oid})
    psycopg.adapters.register_dumper(array, sender)
    return array


UuidArray: Final = _array_class("UuidArray", _UuidDumper)
BigintArray: Final = _array_class("BigintArray", _BigintDumper)
TextArray: Final = _array_class("TextArray", _TextDumper)
TimestamptzArray: Final = _array_class("TimestamptzArray", _TimestamptzDumper)
ByteaArray: Final = _array_class("ByteaArray", _ByteaDumper)

ARRAY_CLASSES: Final[dict[str, type[list[Any]]]] = {
    "uuid": UuidArray,
    "bigint": BigintArray,
    "int8": BigintArray,
    "text": TextArray,
    "timestamptz": TimestamptzArray,
    "bytea": ByteaArray,
}

# A placeholder (`%s`, `%b`, `%t`, each maybe named), with the array type it is cast to;
# `%%` is a literal percent sign.
_PLACEHOLDER: Final = re.compile(r"%%|%(\([^)]*\))?([sbt])(?:::(\w+)\[\])?")


@lru_cache(maxsize=512)
def array_classes(statement: str | bytes) -> tuple[type[list[Any]] | None, ...] | None:
    """The array class of each positional placeholder, in order (None where it takes
    something else); None for a statement with named placeholders."""
    text = statement.decode() if isinstance(statement, bytes) else statement
    classes: list[type[list[Any]] | None] = []
    for match in _PLACEHOLDER.finditer(text):
        if match.group(0) == "%%":
            continue
        if match.group(1) is not None:
            return None
        binary_array = match.group(2) == "b" and match.group(3) is not None
        classes.append(ARRAY_CLASSES.get(match.group(3)) if binary_array else None)
    return tuple(classes)


def typed(statement: str | bytes, params: Sequence[Any]) -> Sequence[Any]:
    """The parameters, each plain list wrapped in the array class its cast names."""
    classes = array_classes(statement)
    if classes is None or len(classes) != len(params):
        return params  # psycopg says what does not match
    return [
        array(param) if array is not None and type(param) is list else param
        for array, param in zip(classes, params, strict=True)
    ]


async def execute_typed(
    conn: AsyncConnection[Any], statement: str, params: Sequence[Any], **kwargs: Any
) -> AsyncCursor[Any]:
    """`conn.execute(statement, params)` with the list parameters typed by their casts."""
    return await conn.execute(statement, typed(statement, params), **kwargs)
