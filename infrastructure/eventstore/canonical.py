"""The hash chain's canonical JSON written by orjson: the same bytes as the standard
library's definition (domain/integrity.py), several times faster on the command path.

Whatever orjson will not write (an integer beyond 64 bits, a type it does not know)
goes to the definition itself, so the bytes never depend on which encoder ran.
"""

from __future__ import annotations

from typing import Any

import orjson

from domain.integrity import stdlib_canonical, use_canonical_encoder


def orjson_canonical(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return stdlib_canonical(record)


def install() -> None:
    """Use orjson for every chain hash of this process (checked against the definition)."""
    use_canonical_encoder(orjson_canonical)
