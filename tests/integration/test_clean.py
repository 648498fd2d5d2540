"""`vigil clean` against real processes standing in for what may run on `var/`: a holder
of `up.lock`, a pid in `up.json`, a postmaster named by `pgdata/postmaster.pid`. The whole
system is tests/e2e/test_readme.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from interfaces.cli.clean import clean, runs_on

pytestmark = pytest.mark.integration

HOLD_LOCK = (
    "import fcntl, sys, time; handle = open(sys.argv[1], 'a'); "
    "fcntl.flock(handle, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def _var(tmp_path: Path) -> Path:
    var_dir = tmp_path / "var"
    (var_dir / "pgdata").mkdir(parents=True)
    (var_dir / "dev-keys.json").write_text("{}")
    return var_dir


def test_a_held_up_lock_is_refused_naming_its_holder(tmp_path: Path) -> None:
    var_dir = _var(tmp_path)
    lock = var_dir / "up.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        holder.stdout.readline()
        said: list[str] = []

        assert clean(var_dir, said.append) == 1

        assert f"(pid {holder.pid}) holds {lock}" in said[0]
        assert var_dir.is_dir()
    finally:
        holder.kill()
        holder.wait()


def test_a_live_postmaster_or_child_is_refused_and_a_dead_one_is_not(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    var_dir = _var(tmp_path)
    (var_dir / "pgdata" / "postmaster.pid").write_text(f"{sleeper.pid}\n/somewhere\n")
    (var_dir / "up.json").write_text(json.dumps({"pids": {"relay": sleeper.pid}}))

    found = runs_on(var_dir)

    assert any(f"PostgreSQL (pid {sleeper.pid})" in line for line in found), found
    assert any(f"relay (pid {sleeper.pid})" in line for line in found), found

    sleeper.kill()
    sleeper.wait()

    assert runs_on(var_dir) == []
    assert clean(var_dir, print) == 0
    assert not var_dir.exists()


def test_a_pid_recycled_after_the_file_was_written_is_not_ours(tmp_path: Path) -> None:
    var_dir = _var(tmp_path)
    path = var_dir / "up.json"
    path.write_text(json.dumps({"pids": {"relay": 1}}))
    os.utime(path, (0, 0))  # written before pid 1 started: pid 1 is someone else's now

    assert runs_on(var_dir) == []
