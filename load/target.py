"""The running `vigil up` that the load tools aim at: its URLs, checked to be loopback, and tokens.

Both `locustfile.py` and `lag.py` import this (each puts its own folder first on `sys.path`).
They send traffic only to this machine: a URL in `var/up.json` (or a `--host`) that names any
other host is refused before a single request is sent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from infrastructure.settings import Settings, load_settings
from interfaces.api.http.tokens import issue_token

LOOPBACK_NAMES = frozenset({"localhost"})
BRANCH = "001"


class NotLoopback(SystemExit):
    """A URL that would send load to another machine: stop before any request."""


@dataclass(frozen=True)
class Target:
    command_api: str
    query_api: str
    settings: Settings

    def token(self, role: str, subject: str) -> str:
        branch = BRANCH if role == "teller" else None
        return issue_token(self.settings, role=role, branch=branch, subject=subject)


def is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False  # any other name could resolve anywhere


def require_loopback(url: str, what: str) -> str:
    if not is_loopback_url(url):
        raise NotLoopback(
            f"refusing {what} {url!r}: load tools send traffic to 127.0.0.1/localhost only"
        )
    return url.rstrip("/")


def read_target() -> Target:
    """The APIs of the `vigil up` running in this directory (`var/up.json`), loopback only."""
    settings = load_settings()
    up = settings.read_up_file()
    if not up:
        raise SystemExit(
            f"{settings.up_file()} not found: start `vigil up` (make run) and run this from "
            "the same directory"
        )
    return Target(
        command_api=require_loopback(str(up.get("command_api", "")), "command API"),
        query_api=require_loopback(str(up.get("query_api", "")), "query API"),
        settings=settings,
    )
