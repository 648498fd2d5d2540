"""Request bodies are JSON, strictly: `JsonBodyRoute` parses a body once, before FastAPI
does, and refuses what the standard library would let through.

- A body that is not declared `application/json` (or `+json`) is 415
  `unsupported_media_type`: the client learns which header is wrong, not that its
  dictionary is invalid.
- Malformed JSON is a 422 `validation_error` on the field `body`, saying where it broke.
- A key twice in one object is refused: parsers disagree on which value wins (the first,
  the last, an error), so what a signing proxy checked and what we store could differ.
- `NaN` and `Infinity` are not JSON.
- JSON nested deeper than the parser's recursion limit is refused, not a 500.
- A number the interpreter cannot hold is refused, not a 500: an integer of more digits
  than Python converts (4,300 by default) or a float beyond the double range (`1e999`,
  which would otherwise be read as infinity).

The parsed value is left where Starlette caches it, so FastAPI does not parse it again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final

from fastapi import Request, Response
from fastapi.routing import APIRoute

from domain.errors import DomainError, ValidationFailed

BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class UnsupportedMediaType(DomainError):
    code = "unsupported_media_type"
    title = "Unsupported media type"


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _no_constants(name: str) -> Any:
    raise ValidationFailed(f"the body is not valid JSON: {name} is not a JSON value")


_NUMBER_TOO_BIG: Final = "the body holds a number too big to read"


class _NumberTooBig(Exception):
    pass


def _finite_float(text: str) -> float:
    # Only numbers with a fraction or an exponent come here (none of our bodies has one).
    value = float(text)
    if not math.isfinite(value):
        raise _NumberTooBig
    return value


def _readable_int(text: str) -> int:
    # Integers are rare in our bodies (amounts are strings): a call each costs nothing.
    try:
        return int(text)
    except ValueError:  # more digits than the interpreter converts
        raise _NumberTooBig from None


# Stateless between calls (its C scanner clears its memo after each): one for every body.
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_no_constants,
    parse_float=_finite_float,
    parse_int=_readable_int,
)


def content_types(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every Content-Type the request gives. More than one is refused (415): which to
    believe would be a guess, and the layers that read headers guess differently."""
    return [value for key, value in raw_headers if key == b"content-type"]


def is_json_content_type(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def parse_json_body(request: Request) -> None:
    """Parse the body into Starlette's cache, or raise the problem it deserves."""
    if request.method not in BODY_METHODS:
        return
    body = await request.body()
    if not body:
        return
    given = content_types(request.scope["headers"])
    if len(given) > 1:
        raise UnsupportedMediaType(
            "the header Content-Type is given more than once; send it once, as "
            "Content-Type: application/json"
        )
    if not given or not is_json_content_type(given[0].decode("latin-1")):
        raise UnsupportedMediaType(
            "the body must be JSON, sent with the header Content-Type: application/json"
        )
    request._json = parse_json_bytes(body)  # Starlette's cache, which FastAPI reads


def parse_json_bytes(body: bytes) -> Any:
    """The JSON value of a request body, or the problem it deserves."""
    try:
        # What json.loads does with bytes, but with one decoder made once, not per body.
        parsed = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except _DuplicateKey as duplicate:
        # The key as JSON would write it: a control character in it stays escaped.
        name = json.dumps(duplicate.key)
        raise ValidationFailed(
            f"the key {name} appears more than once in one object", field="body"
        ) from None
    except json.JSONDecodeError as error:
        raise ValidationFailed(
            f"the body is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})",
            field="body",
        ) from None
    except UnicodeDecodeError:
        raise ValidationFailed("the body is not valid UTF-8", field="body") from None
    except RecursionError:
        # Thousands of nested brackets: no body of ours nests more than a few levels.
        raise ValidationFailed("the body's JSON is nested too deeply", field="body") from None
    except _NumberTooBig:
        raise ValidationFailed(_NUMBER_TOO_BIG, field="body") from None
    return parsed


class JsonBodyRoute(APIRoute):
    """A route whose body is parsed by `parse_json_body` first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            await parse_json_body(request)
            return await handle(request)

        return handler
