"""`vigil` as a person types it, mistakes included: each mistake is one line on stderr and
exit code 2, never a traceback, and says what is wrong in the person's terms (the option,
the file, the format expected); a refused command changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, RUN_ID, Databases, _admin_execute, database_url

pytestmark = pytest.mark.e2e

CLI_TIMEOUT_S = 60.0

# argv, and a fragment the one line must hold.
MISTAKES = [
    (["token", "issue", "--role", "teller"], "needs a branch (e.g. --branch 001)"),
    (["token", "issue", "--role", "admin", "--ttl-s", "-5"], "--ttl-s must be a positive"),
    (["token", "issue", "--role", "janitor"], "invalid choice: 'janitor'"),
    (["audit", "verify", "--from", "yesterday"], "expected e.g. 2026-11-01T00:00:00Z"),
    (["audit", "verify", "--to", "2026-11-01T00:00:00"], "needs a time zone"),
    (["audit", "verify", "--from", "0001-01-01T00:00:00+14:00"], "must lie between 0001-01-02"),
    (["audit", "export", "--from", "2026-11-01T00:00:00Z", "--out", "x"], "--to"),
    (["rules", "backtest", "--config", "nope.toml"], "--config nope.toml: no such file"),
    (["replay", "--to-shadow", "--diff"], "not allowed with argument --to-shadow"),
    (["audit", "verify-export", "/no/such/dir"], "/no/such/dir: no such directory"),
    (["project", "nonsense"], "invalid choice: 'nonsense'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "required: COMMAND"),
]


def _vigil(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    return subprocess.run(
        [sys.executable, "-m", "interfaces.cli", *args],
        cwd=cwd,
        env={**clean_env, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _assert_one_line_exit_2(ran: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"), MISTAKES, ids=[" ".join(args) or "(nothing)" for args, _ in MISTAKES]
)
def test_a_command_line_mistake_is_one_line_and_exit_2(
    args: list[str], fragment: str, tmp_path: Path
) -> None:
    ran = _vigil(args, tmp_path)

    _assert_one_line_exit_2(ran, fragment)
    assert not (tmp_path / "var").exists()


def test_the_backtest_names_its_config_file_not_a_setting(tmp_path: Path) -> None:
    ran = _vigil(["rules", "backtest", "--config", "nope.toml"], tmp_path)

    assert "VIGIL_RULES_CONFIG" not in ran.stderr


def test_from_and_to_say_what_they_take(tmp_path: Path) -> None:
    for command in (["audit", "verify"], ["audit", "export"], ["rules", "backtest"]):
        shown = _vigil([*command, "--help"], tmp_path)
        assert shown.returncode == 0
        help_text = " ".join(shown.stdout.split())
        assert "--from TIME ISO 8601 timestamp with a time zone" in help_text, help_text
        assert "--to TIME ISO 8601 timestamp with a time zone" in help_text, help_text


def test_token_issue_without_a_running_vigil_up_refuses_and_makes_no_keys(
    tmp_path: Path,
) -> None:
    ran = _vigil(["token", "issue", "--role", "teller", "--branch", "001"], tmp_path)

    _assert_one_line_exit_2(ran, "no `vigil up` is running here")
    assert not (tmp_path / "var").exists()


def test_token_issue_with_a_key_given_needs_no_vigil_up(tmp_path: Path) -> None:
    ran = _vigil(["token", "issue", "--role", "viewer"], tmp_path, VIGIL_JWT_SECRET="s" * 40)

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count(".") == 2  # header.claims.signature
    assert not (tmp_path / "var").exists()


def test_migrate_checks_the_grant_role_before_creating_anything(
    databases: Databases, tmp_path: Path
) -> None:
    name = f"vigil_t{RUN_ID}_empty"
    _admin_execute(f'CREATE DATABASE "{name}"')
    databases.created.append(name)

    ran = _vigil(
        ["migrate", "--grant-to", "no_such_role_here"],
        tmp_path,
        VIGIL_DATABASE_URL=database_url(name),
    )

    _assert_one_line_exit_2(ran, "role 'no_such_role_here' does not exist")
    assert "migrating" not in ran.stdout
    with psycopg.connect(database_url(name)) as conn:
        row = conn.execute("SELECT to_regclass('public.ledger_events')").fetchone()
    assert row == (None,)
