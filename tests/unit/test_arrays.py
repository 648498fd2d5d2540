"""The typed arrays send the same bytes psycopg's generic list dumper sends, and
`typed` finds each parameter's array type in the statement's own casts."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.numeric import Int8

from infrastructure.postgres.arrays import (
    BigintArray,
    ByteaArray,
    TextArray,
    TimestamptzArray,
    UuidArray,
    array_classes,
    typed,
)


def dumped(value: Any) -> bytes:
    (data,) = Transformer().dump_sequence([value], [PyFormat.BINARY])
    assert data is not None
    return bytes(data)


def generic(values: list[Any]) -> bytes:
    """psycopg's own binary dump of the plain list."""
    return dumped(list(values))


texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@pytest.mark.parametrize(
    ("array", "elements"),
    [
        (UuidArray, st.uuids()),
        (TextArray, texts),
        (ByteaArray, st.binary()),
        (TimestamptzArray, instants),
    ],
    ids=["uuid", "text", "bytea", "timestamptz"],
)
@given(data=st.data())
def test_each_array_dumps_as_psycopg_dumps_its_list(
    array: type[list[Any]], elements: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    values = data.draw(st.lists(st.one_of(st.none(), elements), min_size=1))
    if all(v is None for v in values):
        return  # psycopg sends an all-NULL list as text[], the cast decides its type
    assert dumped(array(values)) == generic(values)


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=1))
def test_bigints_dump_as_psycopg_dumps_int8s(values: list[int | None]) -> None:
    # psycopg picks the smallest integer type that holds a plain list; Int8 pins bigint.
    expected = generic([None if v is None else Int8(v) for v in values])
    if all(v is None for v in values):
        return
    assert dumped(BigintArray(values)) == expected


@given(st.lists(st.one_of(st.none(), st.uuids()), min_size=1))
def test_uuids_given_as_text_dump_as_the_uuids(values: list[UUID | None]) -> None:
    as_text = [None if v is None else str(v) for v in values]
    assert dumped(UuidArray(as_text)) == dumped(UuidArray(values))


def test_uuid_text_is_read_in_every_spelling_postgresql_reads() -> None:
    value = UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    spellings = [
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
    ]
    assert {dumped(UuidArray([s, None])) for s in spellings} == {dumped(UuidArray([value, None]))}


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not-a-uuid",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        "a0ee bc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1\u00e9",
        "a0eebc99 9c0b 4ef8 bb6d 6bb9bd380a11",
        " a0eebc999c0b4ef8bb6d6bb9bd380a1 ",
        "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ],
)
def test_text_that_is_no_uuid_is_refused(garbage: str) -> None:
    with pytest.raises(ValueError, match="hexadecimal UUID string"):
        dumped(UuidArray([garbage]))


def test_uuids_and_integers_in_a_text_array_are_their_canonical_text() -> None:
    value = uuid4()
    assert dumped(TextArray([value, 42, None])) == dumped(TextArray([str(value), "42", None]))
    with pytest.raises(TypeError):
        dumped(TextArray([True]))  # PostgreSQL says 'true', Python 'True': not guessed


def test_an_instant_in_another_zone_is_the_same_instant() -> None:
    at = datetime(2026, 12, 6, 15, 30, tzinfo=timezone(timedelta(hours=1)))
    assert dumped(TimestamptzArray([at])) == dumped(TimestamptzArray([at.astimezone(UTC)]))


@pytest.mark.parametrize(
    ("array", "element_oid"),
    [
        (UuidArray, 2950),
        (BigintArray, 20),
        (TextArray, 25),
        (TimestamptzArray, 1184),
        (ByteaArray, 17),
    ],
)
def test_an_array_of_nulls_names_its_element_type(array: type[list[Any]], element_oid: int) -> None:
    # psycopg's generic dumper sends such a list as text, untyped; these know their type.
    head = struct.pack(">iiIii", 1, 1, element_oid, 2, 1)
    assert dumped(array([None, None])) == head + b"\xff\xff\xff\xff" * 2


def test_an_empty_array_has_no_dimensions() -> None:
    assert dumped(UuidArray([]))[:8] == b"\x00\x00\x00\x00\x00\x00\x00\x00"


def test_a_value_of_the_wrong_type_fails_rather_than_being_guessed() -> None:
    with pytest.raises(TypeError):
        dumped(UuidArray([42]))
    with pytest.raises(TypeError):
        dumped(TimestamptzArray([datetime(2026, 1, 1)]))  # no time zone: which instant?


def test_the_classes_follow_the_positional_placeholders_and_their_casts() -> None:
    statement = (
        "SELECT %s, 'a 100%% literal' FROM unnest(%b::uuid[], %b::bigint[], %b::int8[], "
        "%b::text[], %b::timestamptz[], %b::bytea[], %b::numeric[], %b::jsonb[]) "
        "WHERE x = ANY(%t::uuid[]) AND y = %b"
    )
    assert array_classes(statement) == (
        None,
        UuidArray,
        BigintArray,
        BigintArray,
        TextArray,
        TimestamptzArray,
        ByteaArray,
        None,
        None,
        None,  # text format: psycopg's own dumper
        None,
    )
    assert array_classes(statement.encode()) == array_classes(statement)


def test_typed_wraps_plain_lists_and_leaves_everything_else() -> None:
    ids = [uuid4()]
    already = TextArray(["x"])
    params = typed(
        "SELECT %s, %b::uuid[], %b::text[], %b::numeric[], %b::bigint[]",
        ("scalar", ids, already, [1], (1, 2)),
    )
    assert [type(p) for p in params] == [str, UuidArray, TextArray, list, tuple]
    assert params[1] == ids
    assert params[2] is already


def test_a_statement_it_cannot_read_gets_its_parameters_as_they_were() -> None:
    named = {"ids": [uuid4()]}
    assert array_classes("SELECT %(ids)b::uuid[]") is None
    assert typed("SELECT %(ids)b::uuid[]", named) is named  # type: ignore[arg-type]
    mismatched = ([uuid4()],)
    assert typed("SELECT %b::uuid[], %b::uuid[]", mismatched) is mismatched
