"""`vigil clean`: remove `var/`, but never from under a server that still runs on it.

A `vigil up` holds `var/up.lock` for its whole run, including the seconds before it writes
`var/up.json`; a `vigil up` killed outright leaves its PostgreSQL running (it runs as a
daemon, not as a child), and may leave other children, named in `var/up.json`. Each of
those is a reason to refuse. The benchmark's systems live under `var/bench/run-*/`, each
with the same files, so they are checked too.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

LOCK_FILE = "up.lock"
UP_FILE = "up.json"
POSTMASTER_PID_FILE = Path("pgdata") / "postmaster.pid"


def runs_on(var_dir: Path) -> list[str]:
    """What still runs on `var_dir`, each as a sentence saying how to stop it."""
    found: list[str] = []
    for directory in [var_dir, *sorted(var_dir.glob("bench/run-*"))]:
        holding = _up_holding_lock(directory)
        if holding:
            found += holding  # stopping it stops its processes and servers too
            continue
        postgres = _postgres_left(directory)
        found += [line for name, line in _children_left(directory) if name != "postgres"]
        found += postgres
    return found


def _up_holding_lock(directory: Path) -> list[str]:
    path = directory / LOCK_FILE
    if not path.exists():
        return []
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(path)
            how = f"`kill -TERM {holder}`" if holder else "`kill -TERM` its pid"
            who = f"a `vigil up` (pid {holder})" if holder else "a `vigil up`"
            return [f"{who} holds {path}: stop it with Ctrl-C in its terminal, or {how}"]
        fcntl.flock(handle, fcntl.LOCK_UN)
    return []


def _lock_holder(path: Path) -> int | None:
    # Linux lists every lock with its holder's pid and the file's inode; elsewhere, unknown.
    inode = path.stat().st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            return int(fields[4])
    return None


def _children_left(directory: Path) -> list[tuple[str, str]]:
    path = directory / UP_FILE
    try:
        pids = json.loads(path.read_text()).get("pids", {})
        written_at_s = path.stat().st_mtime
    except (OSError, ValueError, AttributeError):
        return []
    return [
        (name, f"{name} (pid {pid}), named in {path}, still runs: stop it with `kill -TERM {pid}`")
        for name, pid in sorted(pids.items())
        if alive_since(pid, written_at_s)
    ]


def _postgres_left(directory: Path) -> list[str]:
    path = directory / POSTMASTER_PID_FILE
    try:
        first_line = path.read_text().splitlines()[0]
        pid = int(first_line.strip())
    except (OSError, ValueError, IndexError):
        return []
    if not alive_since(pid, path.stat().st_mtime):
        return []
    return [
        f"PostgreSQL (pid {pid}) still runs on {path.parent}: stop it with `kill -INT {pid}`, "
        "or start and stop `vigil up` once (it stops what a crashed run left)"
    ]


def alive_since(pid: object, written_at_s: float) -> bool:
    # A process created after the file was written holds a recycled pid, not one of ours.
    if not isinstance(pid, int):
        return False
    try:
        process = psutil.Process(pid)
        created_s = float(process.create_time())
        return bool(process.status() != psutil.STATUS_ZOMBIE and created_s <= written_at_s + 1)
    except psutil.Error:
        return False


def _complain(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def clean(var_dir: Path, say: Callable[[str], None] = _complain) -> int:
    """Remove `var_dir`, or refuse (exit 1) naming what still runs on it."""
    running = runs_on(var_dir)
    if running:
        for reason in running:
            say(f"vigil clean: refused, {reason}")
        say(f"vigil clean: {var_dir} holds the data of what runs; stop it first, then retry")
        return 1
    if var_dir.exists():
        shutil.rmtree(var_dir)
    return 0
