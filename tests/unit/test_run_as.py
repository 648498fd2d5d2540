"""`vigil up` as root runs PostgreSQL as an unprivileged user: a directory on the way to
its programs that this user may not search stops it at once, naming the directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.ops.embedded import EmbeddedServerError
from infrastructure.ops.postgres_server import (
    _RunAs,
    first_blocking_directory,
    require_reachable,
)

# Another user than the one running the tests: the "other" permission bits apply.
STRANGER = _RunAs("stranger", os.getuid() + 12345, os.getgid() + 12345)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory every user may pass to (pytest's own is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="vigil-run-as-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    for path in base.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(base)


def _program(tmp_path: Path, private_mode: int) -> tuple[Path, Path]:
    private = tmp_path / "home"
    program = private / "venv" / "bin" / "initdb"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    private.chmod(private_mode)
    tmp_path.chmod(0o755)
    return private, program


def test_a_private_directory_on_the_way_is_named(tmp_path: Path) -> None:
    private, program = _program(tmp_path, 0o700)
    try:
        assert first_blocking_directory(program, STRANGER) == private
        with pytest.raises(EmbeddedServerError, match="chmod o\\+x") as refusal:
            require_reachable(program, STRANGER, "the programs")
        assert str(private) in str(refusal.value)
        assert "as an ordinary user" in str(refusal.value)
    finally:
        private.chmod(0o755)


def test_a_way_every_user_may_pass_is_fine(tmp_path: Path) -> None:
    _, program = _program(tmp_path, 0o711)
    assert first_blocking_directory(program, STRANGER) is None
    require_reachable(program, STRANGER, "the programs")


def test_a_program_the_user_may_not_run_is_named(tmp_path: Path) -> None:
    _, program = _program(tmp_path, 0o755)
    program.chmod(0o700)
    assert first_blocking_directory(program, STRANGER) == program
