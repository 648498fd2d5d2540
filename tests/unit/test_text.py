"""Acceptable text (domain/text.py): what may go into the permanent record."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.text import BYTES_PER_CHAR_MAX, TextRefused, acceptable_text

CHARS_MAX = 50


def accept(value: str, **kwargs: object) -> str:
    return acceptable_text(value, chars_max=CHARS_MAX, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a\x00b", "control character (U+0000) at position 1"),
        ("a\tb", "control character (U+0009)"),
        ("a\x7fb", "control character (U+007F)"),
        ("a\x85b", "line break (U+0085)"),
        ("a\nb", "line break (U+000A)"),
        ("pay \u202eevil", "bidirectional control character (U+202E)"),
        ("a\u2066b\u2069", "bidirectional control character (U+2066)"),
        ("a\u200fb", "bidirectional control character (U+200F)"),
        ("a\u2028b", "line separator (U+2028)"),
        ("a\ud800b", "lone surrogate (U+D800)"),
        ("a\u0378b", "unassigned code point (U+0378)"),
        ("", "empty or invisible"),
        ("   ", "empty or invisible"),
        ("\u200b\u200c\u200d\ufeff\u2060", "empty or invisible"),
        ("\u3164\u3164", "empty or invisible"),
        ("\u0301", "empty or invisible"),
        ("x" * (CHARS_MAX + 1), f"at most {CHARS_MAX} are allowed"),
        ("\U0001f600" * 40, f"at most {CHARS_MAX * BYTES_PER_CHAR_MAX} are allowed"),
    ],
)
def test_text_the_record_cannot_hold_is_refused_saying_what_and_where(
    value: str, reason: str
) -> None:
    with pytest.raises(TextRefused, match=re.escape(reason)):
        accept(value)


def test_a_refusal_names_the_character_by_its_code_point_never_raw() -> None:
    with pytest.raises(TextRefused) as refused:
        accept("a\x00\u202e")
    assert "\x00" not in str(refused.value)
    assert "\u202e" not in str(refused.value)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("  Ada Lovelace  ", "Ada Lovelace"),
        ("Zoe\u0308", "Zo\u00eb"),  # decomposed to composed
        ("李小龙", "李小龙"),
        ("\u0645\u062d\u0645\u062f", "\u0645\u062d\u0645\u062f"),  # Arabic, no controls
        ("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧"),  # a joined emoji keeps its joiners
        # Persian needs the zero-width non-joiner
        ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",) * 2,
        ("\ue000 private", "\ue000 private"),
    ],
)
def test_text_a_person_would_write_is_kept_as_nfc_and_trimmed(value: str, kept: str) -> None:
    assert accept(value) == kept


def test_notes_may_hold_line_feeds_and_a_browsers_crlf_becomes_one() -> None:
    assert accept("first\r\nsecond\nthird", multiline=True) == "first\nsecond\nthird"
    with pytest.raises(TextRefused, match="line break"):
        accept("first\rsecond", multiline=True)
    with pytest.raises(TextRefused, match="control character"):
        accept("tab\there", multiline=True)


@given(st.text(max_size=80))
def test_accepted_text_is_nfc_trimmed_visible_bounded_and_stable(value: str) -> None:
    try:
        kept = accept(value)
    except TextRefused:
        return
    assert unicodedata.is_normalized("NFC", kept)
    assert kept == kept.strip()
    assert 0 < len(kept) <= CHARS_MAX
    assert len(kept.encode("utf-8")) <= CHARS_MAX * BYTES_PER_CHAR_MAX
    assert all(unicodedata.category(c) not in ("Cc", "Cs", "Cn") for c in kept)
    assert accept(kept) == kept  # a retry of the stored form is the same text


@given(st.text(max_size=40))
def test_a_decomposed_retry_is_accepted_as_the_same_text(value: str) -> None:
    decomposed = unicodedata.normalize("NFD", value)
    try:
        kept = accept(value)
    except TextRefused:
        with pytest.raises(TextRefused):
            accept(decomposed)
        return
    assert accept(decomposed) == kept
