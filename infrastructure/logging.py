"""The one logger setup: JSON lines on stdout, for structlog and stdlib (uvicorn) alike.

structlog logs natively (no stdlib round trip: it is on every request's path); stdlib
records, from uvicorn, aiokafka and psycopg, pass through the same processors and renderer,
so a line looks the same whoever wrote it.

structlog's lines below a warning are written without a flush of their own: on the command
API that is one line per request, and a flush is a system call that hands the interpreter
lock to the committer's threads and back. A daemon thread flushes what waits every
`FLUSH_EVERY_S`; a warning or worse flushes at once, with every line before it; so does
the process's exit. A process killed outright (SIGKILL) may lose its last fraction of a
second of info lines, never a warning. This holds where stdout itself writes through
(`PYTHONUNBUFFERED`, `python -u`, as container images set): the log then writes to a
buffered stream of its own over the same file descriptor.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
import threading
import time
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
FLUSH_EVERY_S: Final = 0.2


def _dumps(value: Any, **kwargs: Any) -> str:
    # `default` turns what orjson cannot encode (exceptions, paths) into strings.
    return orjson.dumps(value, default=kwargs.get("default", str)).decode()


class _Lines:
    """structlog's `WriteLogger`, but only warnings and worse flush at once."""

    def __init__(self, file: TextIO) -> None:
        self._write = file.write
        self._flush = file.flush
        self._lock = _flusher.watch(file)

    def msg(self, message: str) -> None:
        with self._lock:
            self._write(message + "\n")

    def msg_flushed(self, message: str) -> None:
        with self._lock:
            self._write(message + "\n")
            self._flush()

    log = debug = info = msg
    warn = warning = fatal = failure = err = error = critical = exception = msg_flushed


class _Flusher:
    """One daemon thread per process that flushes the log's stream every `FLUSH_EVERY_S`
    (the stream of the last `configure_logging`: tests configure more than once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._file: TextIO | None = None
        self._thread: threading.Thread | None = None

    def watch(self, file: TextIO) -> threading.Lock:
        with self.lock:
            self._file = file
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="log-flush", daemon=True)
            self._thread.start()
        return self.lock

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)
            with self.lock:
                try:
                    if self._file is not None:
                        self._file.flush()
                except (OSError, ValueError):  # closed by its owner, or the disk refused
                    self._file = None


_flusher = _Flusher()


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


# Buffered streams over stdout's file descriptor, made once each (logging may be configured
# more than once in a process).
_buffered: dict[int, TextIO] = {}


def _stdout_buffered() -> TextIO:
    """stdout, buffered even where it writes through (`PYTHONUNBUFFERED`, `python -u`):
    a stream of its own over the same file descriptor, flushed by the flusher, by a
    warning and at exit. Anything else standing in for stdout (a test's capture) as is."""
    stdout = sys.__stdout__
    if stdout is None or sys.stdout is not stdout or not getattr(stdout, "write_through", False):
        return sys.stdout
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return stdout
    stream = _buffered.get(fd)
    if stream is None:
        stdout.flush()
        stream = open(  # noqa: SIM115 - open for the process's life; flushed at exit
            fd, "w", encoding=stdout.encoding, errors=stdout.errors, closefd=False
        )
        atexit.register(_flush_quietly, stream)
        _buffered[fd] = stream
    return stream


def _flush_quietly(stream: TextIO) -> None:
    # OSError, ValueError: the reader has gone, or the stream was closed.
    with _flusher.lock, contextlib.suppress(OSError, ValueError):
        stream.flush()


def configure_logging(level: str, service: str, *, stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging once per process, before serving."""
    level_number = _level_number(level)
    output = stream if stream is not None else _stdout_buffered()
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
        logger_factory=lambda *args: _Lines(output),
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
