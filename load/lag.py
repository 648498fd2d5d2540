"""Command-to-query lag of a running `vigil up`: how soon after a deposit's reply the query
API shows it.

Each thread opens one account, then, command after command, sends a deposit to the command
API and at once asks the query API for the account with `min_version=<the reply's version>`
(one request: the server waits, up to 2 s, until the projection has applied that version).
`visible_ms` is the time from the deposit's reply to that read's reply, so it includes one
query round trip; `command_ms` is the deposit's own round trip.

    cd <where vigil up runs> && python load/lag.py --commands 1000 [--concurrency 8] [--json OUT]

Loopback only (target.py); bounded by --commands (at most 100,000) and --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_options import bounded
from target import Target, read_target

COMMANDS_DEFAULT = 1000
COMMANDS_MAX = 100_000
CONCURRENCY_MAX = 64
MAX_SECONDS_DEFAULT = 300.0
MAX_SECONDS_MAX = 3600.0
# Above the server's 2 s `min_version` wait, so a lagging projection shows as its 503.
HTTP_TIMEOUT_S = 10.0
DEPOSIT_AMOUNT = "1.00"
PERCENTILES = (50, 95, 99)


@dataclass
class Recorder:
    """What every thread measured; one lock, since threads report after each command."""

    total: int
    started_s: float = field(default_factory=time.monotonic)
    visible_ms: list[float] = field(default_factory=list)
    command_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    attempted: int = 0
    deciles_printed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def measured(self, command_ms: float, visible_ms: float) -> None:
        with self.lock:
            self.command_ms.append(command_ms)
            self.visible_ms.append(visible_ms)
            self._attempt()

    def failed(self, kind: str, *, attempt: bool = True) -> None:
        with self.lock:
            self.errors[kind] += 1
            if attempt:
                self._attempt()

    def _attempt(self) -> None:
        self.attempted += 1
        decile = self.attempted * 10 // self.total
        if decile > self.deciles_printed:
            self.deciles_printed = decile
            elapsed_s = time.monotonic() - self.started_s
            p50 = _percentile(sorted(self.visible_ms), 50)
            print(
                f"  {decile * 10:3d}%  {self.attempted}/{self.total} commands  "
                f"visible p50 {p50:.1f} ms  errors {sum(self.errors.values())}  "
                f"{elapsed_s:.1f} s",
                flush=True,
            )


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest rank; NaN when there is nothing to rank."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _distribution(samples: list[float]) -> dict[str, float | None]:
    ordered = sorted(samples)
    figures = {f"p{p}": _percentile(ordered, p) for p in PERCENTILES}
    figures["max"] = ordered[-1] if ordered else math.nan
    figures["mean"] = sum(ordered) / len(ordered) if ordered else math.nan
    return {k: None if math.isnan(v) else round(v, 3) for k, v in figures.items()}


def _problem(reply: httpx.Response) -> str:
    try:
        code = reply.json().get("code", "")
    except ValueError:
        code = ""
    return f"{reply.request.method} {reply.status_code} {code}".strip()


def _clients(target: Target, run_id: str, index: int) -> tuple[httpx.Client, httpx.Client]:
    timeout = httpx.Timeout(HTTP_TIMEOUT_S)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    teller = target.token("teller", f"lag-{run_id}-{index}")
    viewer = target.token("viewer", f"lag-viewer-{run_id}-{index}")
    command = httpx.Client(
        base_url=target.command_api,
        timeout=timeout,
        limits=limits,
        headers={"Authorization": f"Bearer {teller}"},
    )
    query = httpx.Client(
        base_url=target.query_api,
        timeout=timeout,
        limits=limits,
        headers={"Authorization": f"Bearer {viewer}"},
    )
    return command, query


def _open_account(command: httpx.Client, run_id: str, index: int) -> str:
    reply = command.post(
        "/v1/accounts",
        json={"owner": f"Lag probe {run_id}-{index}", "branch": "001", "currency": "GBP"},
        headers={"Idempotency-Key": f"lag-open-{run_id}-{index}"},
    )
    if reply.status_code != 201:
        raise RuntimeError(_problem(reply))
    return str(reply.json()["account_id"])


def _probe(
    target: Target, run_id: str, index: int, commands: int, deadline_s: float, rec: Recorder
) -> None:
    """One thread: one account, `commands` deposits, each followed by a fresh read."""
    command, query = _clients(target, run_id, index)
    with command, query:
        try:
            account_id = _open_account(command, run_id, index)
        except (httpx.HTTPError, RuntimeError) as error:
            rec.failed(f"open account: {error}", attempt=False)
            return
        for sequence in range(commands):
            if time.monotonic() >= deadline_s:
                return
            try:
                _deposit_then_read(
                    command, query, account_id, f"lag-{run_id}-{index}-{sequence}", rec
                )
            except httpx.HTTPError as error:
                rec.failed(type(error).__name__)


def _deposit_then_read(
    command: httpx.Client, query: httpx.Client, account_id: str, key: str, rec: Recorder
) -> None:
    sent_s = time.perf_counter()
    reply = command.post(
        f"/v1/accounts/{account_id}/deposits",
        json={"amount": DEPOSIT_AMOUNT, "currency": "GBP", "reference": "lag probe"},
        headers={"Idempotency-Key": key},
    )
    replied_s = time.perf_counter()
    if reply.status_code != 201:
        rec.failed(_problem(reply))
        return
    version = int(reply.json()["version"])
    read = query.get(f"/v1/accounts/{account_id}", params={"min_version": version})
    visible_s = time.perf_counter()
    if read.status_code != 200:
        rec.failed(_problem(read))
        return
    if int(read.json()["projected_version"]) < version:
        rec.failed("GET 200 older than min_version")
        return
    rec.measured((replied_s - sent_s) * 1000, (visible_s - replied_s) * 1000)


def run(commands: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    target = read_target()
    run_id = uuid.uuid4().hex[:8]
    rec = Recorder(total=commands)
    deadline_s = rec.started_s + max_seconds
    shares = [
        commands // concurrency + (1 if k < commands % concurrency else 0)
        for k in range(concurrency)
    ]
    print(
        f"lag: {commands} deposits on {concurrency} account(s), {target.command_api} -> "
        f"{target.query_api}, at most {max_seconds:.0f} s",
        flush=True,
    )
    threads = [
        threading.Thread(
            target=_probe,
            args=(target, run_id, k, share, deadline_s, rec),
            name=f"lag-{k}",
            daemon=True,  # a thread stuck past the deadline must not keep the process alive
        )
        for k, share in enumerate(shares)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        # Each in-flight request ends within HTTP_TIMEOUT_S of the deadline.
        thread.join(max(0.0, deadline_s - time.monotonic()) + 2 * HTTP_TIMEOUT_S)
    elapsed_s = time.monotonic() - rec.started_s
    with rec.lock:
        return {
            "commands_requested": commands,
            "commands_attempted": rec.attempted,
            "measured": len(rec.visible_ms),
            "concurrency": concurrency,
            "elapsed_s": round(elapsed_s, 3),
            "commands_per_s": round(rec.attempted / elapsed_s, 1) if elapsed_s > 0 else None,
            "stopped_by_deadline": rec.attempted < commands and elapsed_s >= max_seconds,
            "visible_ms": _distribution(rec.visible_ms),
            "command_ms": _distribution(rec.command_ms),
            "errors_total": sum(rec.errors.values()),
            "errors": dict(rec.errors),
            "command_api": target.command_api,
            "query_api": target.query_api,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            },
        }


def _print_summary(result: dict[str, Any]) -> None:
    def line(label: str, figures: dict[str, float | None]) -> str:
        cells = "  ".join(
            f"{k} {'-' if figures[k] is None else format(figures[k], '.1f')} ms"
            for k in ("p50", "p95", "p99", "max")
        )
        return f"  {label:<22}{cells}"

    print(
        f"lag: {result['measured']} measured of {result['commands_attempted']} attempted "
        f"({result['commands_requested']} asked), concurrency {result['concurrency']}, "
        f"{result['elapsed_s']:.1f} s, {result['commands_per_s']} commands/s"
        + (", stopped by --max-seconds" if result["stopped_by_deadline"] else "")
    )
    print(line("visible after reply", result["visible_ms"]))
    print(line("command round trip", result["command_ms"]))
    print(f"  errors                {result['errors_total']}")
    for kind, count in sorted(result["errors"].items()):
        print(f"    {count:6d}  {kind}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=bounded(1, COMMANDS_MAX, int), default=COMMANDS_DEFAULT)
    parser.add_argument("--concurrency", type=bounded(1, CONCURRENCY_MAX, int), default=1)
    parser.add_argument(
        "--max-seconds", type=bounded(1, MAX_SECONDS_MAX, float), default=MAX_SECONDS_DEFAULT
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.concurrency > args.commands:
        parser.error("--concurrency cannot exceed --commands (one account per thread)")
    result = run(args.commands, args.concurrency, args.max_seconds)
    _print_summary(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["measured"] and not result["errors_total"] else 1


if __name__ == "__main__":
    sys.exit(main())
