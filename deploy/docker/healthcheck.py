"""Container health check for the Vigil image (stdlib only; the image has no curl).

Probes the endpoint of whatever Vigil process is PID 1:

    vigil api command   -> http://127.0.0.1:$VIGIL_COMMAND_PORT/health/ready  (default 8000)
    vigil api query     -> http://127.0.0.1:$VIGIL_QUERY_PORT/health/ready    (default 8001)
    vigil relay         -> http://127.0.0.1:$VIGIL_RELAY_METRICS_PORT/health/ready (9102)
    vigil workers       -> http://127.0.0.1:$VIGIL_WORKERS_METRICS_PORT/health/ready (9101)
    vigil case-opener   -> http://127.0.0.1:$VIGIL_CASE_OPENER_METRICS_PORT/health/ready (9103)
    vigil project NAME  -> its --metrics-port, if it has one

A `--port` / `--metrics-port` on the command line wins over the environment, as in the CLI.
`python healthcheck.py URL` (or VIGIL_HEALTHCHECK_URL) probes that URL instead. Anything
else (`vigil token ...`, `vigil --help`) has nothing to probe and passes.

Exit 0 healthy, 1 unhealthy (Docker's convention).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 2.5
LOOPBACK = "127.0.0.1"


def _pid1_args() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    # `/opt/vigil/bin/python /opt/vigil/bin/vigil api command ...`: keep what follows `vigil`.
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "vigil":
            return argv[i + 1 :]
    return []


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _host() -> str:
    host = os.environ.get("VIGIL_HOST", LOOPBACK)
    return LOOPBACK if host in ("", "0.0.0.0", "::") else host


def target_url(args: list[str]) -> str | None:
    if len(args) >= 2 and args[0] == "api" and args[1] in ("command", "query"):
        env, default = (
            ("VIGIL_COMMAND_PORT", "8000") if args[1] == "command" else ("VIGIL_QUERY_PORT", "8001")
        )
        port = _flag(args, "--port") or os.environ.get(env, default)
        return f"http://{_host()}:{port}/health/ready"
    if args and args[0] == "relay":
        port = _flag(args, "--metrics-port") or os.environ.get("VIGIL_RELAY_METRICS_PORT", "9102")
    elif args and args[0] == "workers":
        port = _flag(args, "--metrics-port") or os.environ.get("VIGIL_WORKERS_METRICS_PORT", "9101")
    elif args and args[0] == "case-opener":
        port = _flag(args, "--metrics-port") or os.environ.get(
            "VIGIL_CASE_OPENER_METRICS_PORT", "9103"
        )
    elif args and args[0] == "project":
        port = _flag(args, "--metrics-port") or "0"
    else:
        return None
    if port == "0":  # no port of its own: nothing to probe
        return None
    return f"http://{_host()}:{port}/health/ready"


def main() -> int:
    url = (sys.argv[1] if len(sys.argv) > 1 else None) or os.environ.get("VIGIL_HEALTHCHECK_URL")
    if not url:
        url = target_url(_pid1_args())
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:  # noqa: S310
            healthy = 200 <= reply.status < 300
    except (urllib.error.URLError, OSError) as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    if not healthy:
        print(f"unhealthy: {url}: status {reply.status}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
