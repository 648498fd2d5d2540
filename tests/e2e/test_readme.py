"""The README as a new user meets it: a fresh directory, `vigil up` with nothing given (its
own PostgreSQL, Redis and broker), the tokens it prints, and every example block marked
`<!-- run-against-vigil-up -->` run by bash, in order, in one shell. Each block must exit 0
and print the fragments of the `<!-- prints: ... -->` line after it. Around it: a clean
start logs no warning or error, and `make clean` refuses while anything runs on `var/`,
from `vigil up`'s first second to the PostgreSQL a killed one leaves behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import ROOT, stop_gracefully

pytestmark = pytest.mark.e2e

UP_READY_TIMEOUT_S = 120.0
BLOCKS_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
CLEAN_TIMEOUT_S = 30.0
POLL_S = 0.1
MARK = "<!-- run-against-vigil-up -->"
BLOCK = re.compile(
    "^" + re.escape(MARK) + r"\n```sh\n(?P<code>.*?)```\n<!-- prints: (?P<prints>.*?) -->",
    re.DOTALL | re.MULTILINE,
)
TOKEN_LINE = re.compile(r"export (?P<name>[A-Z]+_TOKEN)=(?P<token>\S+)")
BLOCK_START = "@@@ README block {index} @@@"
JSON_LOGS = ("command_api", "query_api", "relay", "workers", "case_opener", "up")
# The README's ports; `vigil up` here takes free ones.
README_COMMAND_URL = "http://127.0.0.1:8000"
README_QUERY_URL = "http://127.0.0.1:8001"


@dataclass
class Block:
    code: str
    prints: list[str]


@dataclass
class FirstHour:
    work: Path
    process: subprocess.Popen[bytes]
    output_path: Path
    env: dict[str, str]

    @property
    def var_dir(self) -> Path:
        return self.work / "var"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def up_file(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.var_dir / "up.json").read_text())
        return data


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text()
    blocks = [
        Block(m["code"], [p.strip() for p in m["prints"].split(" | ")])
        for m in BLOCK.finditer(text)
    ]
    marks = text.splitlines().count(MARK)
    assert len(blocks) == marks, "every marked block has its `prints:` line"
    return blocks


def _user_env(work: Path) -> dict[str, str]:
    # A new user's shell after `. .venv/bin/activate`: no VIGIL_* at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    # Free ports instead of 8000/8001 and 9101-9103, which other runs on this machine hold.
    for port in ("COMMAND", "QUERY", "WORKERS_METRICS", "RELAY_METRICS", "CASE_OPENER_METRICS"):
        env[f"VIGIL_{port}_PORT"] = "0"
    return env


def _make_clean(first: FirstHour) -> subprocess.CompletedProcess[str]:
    # The repository's Makefile, run where this `vigil up` runs.
    return subprocess.run(
        ["make", "-s", "-f", str(ROOT / "Makefile"), f"VENV={ROOT / '.venv'}", "clean"],
        cwd=first.work,
        env=first.env,
        capture_output=True,
        text=True,
        timeout=CLEAN_TIMEOUT_S,
        check=False,
    )


def _wait_for(first: FirstHour, path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if first.process.poll() is not None:
            pytest.fail(f"vigil up exited ({first.process.returncode}):\n{first.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} not written within {timeout_s:.0f} s:\n{first.output()}")
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def first_hour() -> Iterator[FirstHour]:
    # Not tmp_path: the embedded PostgreSQL's user must traverse every parent directory,
    # and its unix socket path must stay short.
    work = Path(tempfile.mkdtemp(prefix="vigil-readme-"))
    work.chmod(0o755)
    for shared in ("load", "deploy"):  # what the README's commands name, from the root
        (work / shared).symlink_to(ROOT / shared)
    env = _user_env(work)
    output_path = work / "up-output.log"
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            ["vigil", "up"], cwd=work, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    first = FirstHour(work, process, output_path, env)
    try:
        _wait_for(first, first.var_dir / "up.lock", UP_READY_TIMEOUT_S)
        early = _make_clean(first)  # seconds after start, before up.json exists
        assert not (first.var_dir / "up.json").exists(), "the check ran too late to matter"
        assert early.returncode != 0, early.stdout + early.stderr
        assert "up.lock" in early.stderr, early.stderr
        _wait_for(first, first.var_dir / "up.json", UP_READY_TIMEOUT_S)
        # The summary with the tokens follows up.json.
        while "Press Ctrl-C to stop." not in first.output():
            _wait_for(first, first.var_dir / "up.json", UP_READY_TIMEOUT_S)
            time.sleep(POLL_S)
        yield first
    finally:
        stop_gracefully(process, STOP_TIMEOUT_S)
        _stop_postgres_left(work / "var")
        shutil.rmtree(work, ignore_errors=True)


def _stop_postgres_left(var_dir: Path) -> None:
    try:
        pid = int((var_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
        process = psutil.Process(pid)
        process.send_signal(signal.SIGINT)  # fast shutdown
        process.wait(STOP_TIMEOUT_S)
    except (OSError, ValueError, IndexError, psutil.Error):
        return


def test_a_clean_start_logs_no_warning_and_postgres_no_error(first_hour: FirstHour) -> None:
    for name in JSON_LOGS:
        path = first_hour.var_dir / f"{name}.log"
        for line in path.read_text().splitlines():
            if not line.startswith("{"):
                continue
            level = json.loads(line).get("level")
            assert level not in ("warning", "error", "critical"), f"{path.name}: {line}"
    postgres_log = (first_hour.var_dir / "postgres.log").read_text()
    problems = [line for line in postgres_log.splitlines() if "ERROR:" in line or "FATAL:" in line]
    assert problems == [], "\n".join(problems)


def test_every_marked_readme_block_runs_and_prints_what_the_readme_says(
    first_hour: FirstHour,
) -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 5
    urls = first_hour.up_file()
    env = dict(first_hour.env)
    for match in TOKEN_LINE.finditer(first_hour.output()):
        env[match["name"]] = match["token"]
    assert {"TELLER_TOKEN", "VIEWER_TOKEN", "ADMIN_TOKEN", "COMPLIANCE_TOKEN"} <= set(env)
    script = ["set -euo pipefail"]
    for index, block in enumerate(blocks):
        code = block.code.replace(README_COMMAND_URL, urls["command_api"])
        code = code.replace(README_QUERY_URL, urls["query_api"])
        script += [f"echo '{BLOCK_START.format(index=index)}'", code]

    ran = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=first_hour.work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # what the reader sees: locust prints its table there
        text=True,
        timeout=BLOCKS_TIMEOUT_S,
        check=False,
    )

    outputs = re.split(r"@@@ README block \d+ @@@\n", ran.stdout)[1:]
    failed_at = len(outputs) - 1
    assert ran.returncode == 0, (
        f"block {failed_at} exited {ran.returncode}:\n{blocks[failed_at].code}\n"
        f"--- output\n{outputs[-1][-3000:] if outputs else ran.stdout[-3000:]}"
    )
    assert len(outputs) == len(blocks)
    for block, output in zip(blocks, outputs, strict=True):
        missing = [fragment for fragment in block.prints if fragment not in output]
        assert missing == [], f"{block.code}\nprinted:\n{output[-3000:]}\nmissing: {missing}"


def test_make_clean_refuses_while_vigil_up_or_the_postgres_it_left_runs(
    first_hour: FirstHour,
) -> None:
    running = _make_clean(first_hour)
    assert running.returncode != 0
    assert "Ctrl-C" in running.stderr, running.stderr
    assert (first_hour.var_dir / "pgdata").is_dir()

    pids = first_hour.up_file()["pids"]
    first_hour.process.kill()  # as `kill -9`: its PostgreSQL, a daemon, keeps running
    first_hour.process.wait(STOP_TIMEOUT_S)
    # The others get SIGTERM from the kernel as their parent dies, and stop in a moment.
    children = []
    for name, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            children += [] if name == "postgres" else [psutil.Process(pid)]
    psutil.wait_procs(children, timeout=STOP_TIMEOUT_S)
    left = _make_clean(first_hour)

    assert left.returncode != 0
    assert f"PostgreSQL (pid {pids['postgres']})" in left.stderr, left.stderr
    assert "kill -INT" in left.stderr, left.stderr
    assert (first_hour.var_dir / "pgdata").is_dir()

    _stop_postgres_left(first_hour.var_dir)
    cleaned = _make_clean(first_hour)

    assert cleaned.returncode == 0, cleaned.stderr
    assert not first_hour.var_dir.exists()
