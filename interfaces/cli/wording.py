"""How the command line counts things: "1 alert", "2 alerts", never "1 alert(s)"."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """`count` and the noun that agrees with it (every noun we count takes an s)."""
    return f"{count:,} {noun if count == 1 else noun + 's'}"
