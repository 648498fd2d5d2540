"""The benchmark's baseline: a plain `eventsourcing` application saving one transfer per
transaction, as the library's bank-accounts example does.

No group commit, no aggregate cache, no HTTP, no hash chain, no event index: a stock
`Application` on `eventsourcing.postgres` with a `BankAccount` aggregate of its own. Each
transfer gets both accounts from the repository, withdraws, deposits and calls
`app.save(source, destination)`: one PostgreSQL transaction (and one fsync) per transfer.
`load/bench.py` runs it in the same run as Vigil, on a fresh database of the same embedded
PostgreSQL, so the ratio between the two holds on a noisy machine.

    python load/bench_baseline.py --database-url postgresql://vigil@127.0.0.1:PORT/DB [--seconds 20]

Loopback databases only; bounded by --seconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import Environment

THREADS_DEFAULT = 4
ACCOUNTS_DEFAULT = 1_000
SECONDS_DEFAULT = 20.0
SECONDS_MAX = 600.0
OPENING_BALANCE_MINOR = 400_000  # 4,000.00: transfers of at most 5.00 rarely run dry
TRANSFER_MINOR_MAX = 500
LATENCIES_MAX = 1_000_000  # a bound on memory, far above what --seconds allows


class BaselineRefused(Exception):
    """The baseline aggregate's own refusal (insufficient funds, a bad amount)."""


class BankAccount(Aggregate):
    """The library's example account, reduced: integer minor units, no overdraft."""

    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance_minor = 0

    def deposit(self, amount_minor: int) -> None:
        if amount_minor <= 0:
            raise BaselineRefused(f"amount must be positive, not {amount_minor}")
        self._credited(amount_minor)

    def withdraw(self, amount_minor: int) -> None:
        if amount_minor <= 0:
            raise BaselineRefused(f"amount must be positive, not {amount_minor}")
        if amount_minor > self.balance_minor:
            raise BaselineRefused("insufficient funds")
        self._debited(amount_minor)

    @event("Credited")
    def _credited(self, amount_minor: int) -> None:
        self.balance_minor += amount_minor

    @event("Debited")
    def _debited(self, amount_minor: int) -> None:
        self.balance_minor -= amount_minor


class BaselineBank(Application[UUID]):
    """Get, call, save: one `save()` (one transaction) per command."""

    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        # Only what we pass: a stray POSTGRES_* variable must not move the baseline elsewhere.
        return Environment(name, dict(env or {}))

    def open_account(self, owner: str, opening_minor: int) -> UUID:
        account = BankAccount(owner)
        account.deposit(opening_minor)
        self.save(account)
        return account.id

    def transfer(self, from_id: UUID, to_id: UUID, amount_minor: int) -> None:
        source = self._account(from_id)
        destination = self._account(to_id)
        source.withdraw(amount_minor)
        destination.deposit(amount_minor)
        self.save(source, destination)

    def _account(self, account_id: UUID) -> BankAccount:
        account: object = self.repository.get(account_id)
        assert isinstance(account, BankAccount), account_id
        return account


def is_loopback_database(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def store_env(database_url: str, threads: int) -> dict[str, str]:
    if not is_loopback_database(database_url):
        raise SystemExit(f"refusing {database_url!r}: the baseline runs on a loopback database")
    url = urlsplit(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(url.path.lstrip("/")),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_POOL_SIZE": str(threads),  # one connection per thread, none waits for one
        "POSTGRES_MAX_OVERFLOW": "0",
        "POSTGRES_LOCK_TIMEOUT": "5",
        "CREATE_TABLE": "y",
    }


@dataclass
class _Tally:
    done: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _transfer_loop(
    bank: BaselineBank,
    accounts: list[UUID],
    deadline_s: float,
    stop: threading.Event,
    tally: _Tally,
) -> None:
    rng = random.Random()
    while time.monotonic() < deadline_s and not stop.is_set():
        source, destination = rng.sample(accounts, 2)
        started_s = time.perf_counter()
        try:
            bank.transfer(source, destination, rng.randint(1, TRANSFER_MINOR_MAX))
        except IntegrityError:
            # Another thread saved one of the two accounts first: the stock application
            # offers no retry, so the transfer is lost, as it would be for its caller.
            outcome = "version_conflict"
        except BaselineRefused:
            outcome = "refused"
        else:
            outcome = ""
        elapsed_ms = (time.perf_counter() - started_s) * 1000
        with tally.lock:
            if outcome:
                tally.errors[outcome] += 1
            else:
                tally.done += 1
                if len(tally.latencies_ms) < LATENCIES_MAX:
                    tally.latencies_ms.append(elapsed_ms)


def percentile_ms(samples: list[float], percent: float) -> float | None:
    """Nearest rank, rounded; None when there is nothing to rank."""
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1], 3)


def run_baseline(
    database_url: str,
    seconds: float,
    threads: int = THREADS_DEFAULT,
    accounts: int = ACCOUNTS_DEFAULT,
) -> dict[str, Any]:
    """Open and fund `accounts`, then transfer between them from `threads` for `seconds`."""
    assert 0 < seconds <= SECONDS_MAX, seconds
    assert 0 < threads <= 64, threads
    assert accounts >= 2, accounts
    bank = BaselineBank(env=store_env(database_url, threads))
    try:
        ids = [bank.open_account(f"baseline {k}", OPENING_BALANCE_MINOR) for k in range(accounts)]
        tally = _Tally()
        stop = threading.Event()
        started_s = time.monotonic()
        with ThreadPoolExecutor(threads, thread_name_prefix="baseline") as pool:
            try:
                futures = [
                    pool.submit(_transfer_loop, bank, ids, started_s + seconds, stop, tally)
                    for _ in range(threads)
                ]
                for future in futures:
                    future.result()
            finally:
                stop.set()  # on Ctrl-C too: the threads end after their current transfer
        elapsed_s = time.monotonic() - started_s
    finally:
        bank.close()
    return {
        "transfers_per_s": round(tally.done / elapsed_s, 1),
        "transfers": tally.done,
        "p50_ms": percentile_ms(tally.latencies_ms, 50),
        "p95_ms": percentile_ms(tally.latencies_ms, 95),
        "p99_ms": percentile_ms(tally.latencies_ms, 99),
        "errors": dict(tally.errors),
        "threads": threads,
        "accounts": accounts,
        "elapsed_s": round(elapsed_s, 3),
        "one_transaction_per": "transfer",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a loopback PostgreSQL database")
    parser.add_argument("--seconds", type=float, default=SECONDS_DEFAULT)
    parser.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    parser.add_argument("--accounts", type=int, default=ACCOUNTS_DEFAULT)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= SECONDS_MAX:
        parser.error(f"--seconds must be from 1 to {SECONDS_MAX:.0f}")
    if not 1 <= args.threads <= 64 or not 2 <= args.accounts <= 100_000:
        parser.error("--threads must be 1 to 64 and --accounts 2 to 100,000")
    result = run_baseline(args.database_url, args.seconds, args.threads, args.accounts)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
