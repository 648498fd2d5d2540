"""The log's lines reach its file: info lines within a flush interval, without a system
call each; a warning at once, with every line before it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import orjson
import pytest
import structlog

from infrastructure.logging import FLUSH_EVERY_S, configure_logging

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[tuple[TextIO, Path]]:
    path = tmp_path / "service.log"
    saved = structlog.get_config()
    handlers = list(logging.getLogger().handlers)
    level = logging.getLogger().level
    with path.open("w") as stream:  # block-buffered, as a service's stdout into a file
        configure_logging("info", "test", stream=stream)
        try:
            yield stream, path
        finally:
            structlog.configure(**saved)
            root = logging.getLogger()
            root.handlers[:] = handlers
            root.setLevel(level)


def _events(path: Path) -> list[str]:
    return [orjson.loads(line)["event"] for line in path.read_text().splitlines()]


def test_info_lines_reach_the_file_within_a_flush_interval(
    log_file: tuple[TextIO, Path],
) -> None:
    _, path = log_file
    log = structlog.get_logger("test")
    log.info("first_line", n=1)
    log.info("second_line", n=2)
    deadline = time.monotonic() + 20 * FLUSH_EVERY_S
    while _events(path) != ["first_line", "second_line"]:
        assert time.monotonic() < deadline, f"not flushed: {path.read_text()!r}"
        time.sleep(FLUSH_EVERY_S / 4)


def test_a_warning_is_written_at_once_with_the_lines_before_it(
    log_file: tuple[TextIO, Path],
) -> None:
    _, path = log_file
    log = structlog.get_logger("test")
    log.info("before_the_warning")
    log.warning("the_warning", reason="test")
    assert _events(path) == ["before_the_warning", "the_warning"]
    line = orjson.loads(path.read_text().splitlines()[-1])
    assert line["level"] == "warning"
    assert line["service"] == "test"
    assert line["reason"] == "test"


# A service under `python -u` (or PYTHONUNBUFFERED, as container images set), its stdout a
# file: the flusher is held off, so only a warning or the exit can write the info lines.
_UNBUFFERED_CHILD = """
import os, sys
import structlog
import infrastructure.logging as vigil_logging
vigil_logging.FLUSH_EVERY_S = 3600.0
vigil_logging.configure_logging("info", "child")
log = structlog.get_logger("child")
log.info("one")
log.info("two")
after_info = os.fstat(1).st_size
log.warning("three")
after_warning = os.fstat(1).st_size
log.info("four")
print(after_info, after_warning, file=sys.stderr)
"""


def test_under_unbuffered_stdout_info_lines_wait_for_a_warning_or_the_exit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "service.log"
    with path.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-u", "-c", _UNBUFFERED_CHILD],
            stdout=out,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    after_info, after_warning = (int(n) for n in done.stderr.split())
    assert after_info == 0, "each info line was written as it came (stdout writes through)"
    assert after_warning > 0
    assert _events(path) == ["one", "two", "three", "four"]  # the last one at exit
