"""Acceptable text: what a person may write into the permanent record.

Every free-text field (owner, reference, reason, note, assignee, ...) passes through
`acceptable_text` at the edge, before it is stored, hashed into the chain, or
fingerprinted for idempotency. The record is forever and every consumer downstream
must be able to store and show it, so:

- it is normalised to NFC (a retry sent in decomposed form is the same command);
- surrounding whitespace is trimmed, and what is left must be visible (not empty, not
  only spaces, zero-width or other format characters);
- control characters are refused (C0 and C1, DEL; NUL is what PostgreSQL cannot hold
  at all), except that multi-line fields (notes) may hold line feeds (a CR LF pair, as a
  browser's form sends it, becomes one line feed);
- bidirectional controls are refused (they make text display other than it reads:
  "Trojan Source"), as are the Unicode line and paragraph separators;
- lone surrogates (which UTF-8 cannot encode) and unassigned code points (whose
  normalisation a later Unicode version may change) are refused;
- length is bounded in characters and in UTF-8 bytes.

Pure: stdlib only. A refusal is a `TextRefused` (a `ValueError`) whose message says what
is wrong and where, with the character named by its code point, never echoed raw.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
LINE_SEPARATORS: Final = frozenset("\u2028\u2029")
# Characters that draw nothing though their category says otherwise (Hangul fillers,
# the braille blank): a name made only of them is as invisible as one of spaces.
BLANK_LETTERS: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800")
INVISIBLE_CATEGORIES: Final = frozenset({"Zs", "Zl", "Zp", "Cf", "Cc", "Mn", "Me"})
# A character is at most 4 bytes of UTF-8; a field bounded at 3 bytes a character takes
# any text of the Basic Multilingual Plane whole, and bounds what emoji can add.
BYTES_PER_CHAR_MAX: Final = 3
LINE_FEED: Final = "\n"

# Branch codes are identifiers, not text: one rule for tokens and request bodies.
BRANCH_PATTERN: Final = re.compile(r"[A-Za-z0-9]{1,16}")


class TextRefused(ValueError):
    """The text cannot go into the record; the message says why."""


def acceptable_text(value: str, *, chars_max: int, multiline: bool = False) -> str:
    """The text as the record keeps it (NFC, trimmed), or `TextRefused`."""
    assert chars_max > 0, chars_max
    if multiline:
        value = value.replace("\r\n", LINE_FEED)
    text = unicodedata.normalize("NFC", value).strip()
    for position, char in enumerate(text):
        problem = _refused_char(char, multiline)
        if problem is not None:
            raise TextRefused(f"contains {problem} (U+{ord(char):04X}) at position {position}")
    if not any(_visible(char) for char in text):
        raise TextRefused("is empty or invisible once trimmed")
    if len(text) > chars_max:
        raise TextRefused(f"is {len(text)} characters long; at most {chars_max} are allowed")
    bytes_max = chars_max * BYTES_PER_CHAR_MAX
    size_bytes = len(text.encode("utf-8"))
    if size_bytes > bytes_max:
        raise TextRefused(f"is {size_bytes} bytes of UTF-8; at most {bytes_max} are allowed")
    return text


def _refused_char(char: str, multiline: bool) -> str | None:
    """What is wrong with this character in a text, or None."""
    if char == LINE_FEED and multiline:
        return None
    category = unicodedata.category(char)
    if category == "Cc":
        return "a line break" if char in "\n\r\x85" else "a control character"
    if char in BIDI_CONTROLS:
        return "a bidirectional control character"
    if char in LINE_SEPARATORS:
        return "a line separator"
    if category == "Cs":
        return "a lone surrogate"
    if category == "Cn":
        return "an unassigned code point"
    return None


def _visible(char: str) -> bool:
    return char not in BLANK_LETTERS and unicodedata.category(char) not in INVISIBLE_CATEGORIES
