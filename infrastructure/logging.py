"""The one logger setup: JSON lines on stdout, for structlog and stdlib (uvicorn) alike.

structlog logs natively (no stdlib round trip: it is on every request's path); stdlib
records, from uvicorn, aiokafka and psycopg, pass through the same processors and renderer,
so a line looks the same whoever wrote it.
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

# uvicorn's access log is replaced by ours (`request_completed`, with correlation id).
_UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
_UVICORN_ACCESS_LOGGER: Final = "uvicorn.access"
_HANDLER_MARK: Final = "_vigil_handler"
# An error message is for people: bounded, and with no character PostgreSQL cannot hold.
ERROR_CHARS_MAX: Final = 2_000


def _dumps(value: Any, **kwargs: Any) -> str:
    # `default` turns what orjson cannot encode (exceptions, paths) into strings.
    return orjson.dumps(value, default=kwargs.get("default", str)).decode()


def _add_service(service: str) -> Processor:
    def add_service(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def configure_logging(level: str, service: str, *, stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging once per process, before serving."""
    level_number = _level_number(level)
    output = stream if stream is not None else sys.stdout
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _add_service(service),
    ]
    renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.WriteLoggerFactory(file=output),
        cache_logger_on_first_use=True,
    )
    _route_stdlib(level_number, output, shared, renderer)


def _route_stdlib(
    level_number: int, output: TextIO, shared: list[Processor], renderer: Processor
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    # Calling twice (tests, uvicorn reloads) must not print every line twice.
    for existing in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level_number)

    # uvicorn may have installed its own handlers (its default log_config); send its
    # records to ours instead so they come out as JSON.
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level_number)
    access = logging.getLogger(_UVICORN_ACCESS_LOGGER)
    access.handlers.clear()
    access.propagate = False
    access.disabled = True


def describe(error: BaseException) -> str:
    """The error in words a person can read, bounded, without control characters: for a
    log line, or a row (a quarantined event's reason) that people will read."""
    text = f"{type(error).__name__}: {error}"
    safe = "".join(ch if unicodedata.category(ch)[0] != "C" else f"\\u{ord(ch):04x}" for ch in text)
    return safe[:ERROR_CHARS_MAX]
