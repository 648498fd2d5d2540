"""The workload `make faults` and `make soak` run, and what it remembers: clients that send
transfers, deposits, withdrawals, holds (placed, then captured or voided) and batches, each
command with a transaction id of its own, retrying on timeouts, 5xx and connection errors
exactly as a careful client would (the same id, the same body, backing off), and a record
of every command's outcome for the invariant checks (faults_checks.py).
Used by faults.py, which imports it as a sibling module.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_system import TRANSPORT_ERRORS, Http

BRANCH = "001"
CURRENCIES = ("GBP", "EUR")
FUNDING_MINOR = 500_00
AMOUNT_MINOR_MAX = 500  # 5.00
LARGE_MINOR, LARGE_SHARE = 12_00, 0.03  # over faults_rules.toml's large_transaction
REQUEST_TIMEOUT_S = 15.0
RETRY_DEADLINE_S = 180.0  # a careful client gives up on a command after this long
BACKOFF_S_MIN, BACKOFF_S_MAX = 0.1, 2.0
TOO_MUCH_MINOR, TOO_MUCH_SHARE = 100_000_00, 0.1  # of withdrawals: refused, insufficient funds
BIG_BATCH_ITEMS = 1_000
SMALL_BATCH_ITEMS = 20

# The events a command leaves, with its transaction id, when it succeeds: exactly these,
# each once (a capture moves the money as a transfer to the hold's payee, or as a card
# withdrawal without one).
EXPECTED_EVENTS: dict[str, Counter[str]] = {
    "open": Counter(),  # an account's id, not a transaction id: checked by its reply
    "deposit": Counter({"Deposited": 1}),
    "withdrawal": Counter({"Withdrawn": 1}),
    "transfer": Counter({"TransferredOut": 1, "TransferredIn": 1}),
    "hold": Counter({"HoldPlaced": 1}),
    "capture_to": Counter({"HoldCaptured": 1, "TransferredOut": 1, "TransferredIn": 1}),
    "capture": Counter({"HoldCaptured": 1, "Withdrawn": 1}),
    "void": Counter({"HoldVoided": 1}),
}


@dataclass
class Record:
    """One command (a single request, or one item of a batch) and how it ended for the
    client: `acknowledged` (2xx, or "ok" in a batch), `refused` (a 4xx the client accepts as
    the answer), or neither (it gave up after RETRY_DEADLINE_S: the outcome is unknown)."""

    kind: str
    transaction_id: str
    single: bool
    status: int | None = None
    reply: Any = None
    attempts: int = 0
    latency_s: float = 0.0
    done: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        return self.status is not None and 400 <= self.status < 500


@dataclass
class Hold:
    hold_id: str
    account_id: str
    to_account_id: str | None


@dataclass
class Workload:
    """Clients over a fixed set of accounts; `gate` paused, they finish what they started
    (retries included) and start nothing new, so the checks see a quiet store."""

    command_url: str
    token: str
    accounts: dict[str, list[str]] = field(default_factory=dict)  # currency -> ids
    records: list[Record] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    pause_s: float = 0.05
    retries: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    # The careful client ---------------------------------------------------------------------

    async def call(
        self, http: Http, path: str, body: dict[str, Any], key: str | None = None
    ) -> tuple[int | None, Any, int]:
        """POST until an answer a careful client accepts: 2xx or 4xx but 429. On a timeout,
        a 5xx, a 429 or a lost connection the same body goes again (its transaction id makes
        the retry safe), backing off; (None, None) after RETRY_DEADLINE_S. Also the number
        of attempts."""
        payload = orjson.dumps(body)
        deadline_s = time.monotonic() + RETRY_DEADLINE_S
        backoff_s = BACKOFF_S_MIN
        attempts = 0
        while True:
            attempts += 1
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, reply = await http.request("POST", path, payload, key)
            except (*TRANSPORT_ERRORS, ValueError) as error:
                http.close()
                why = type(error).__name__
            else:
                if status < 500 and status != 429:
                    return status, _json(reply), attempts
                why = str(status)
            self.retries[why] += 1
            if time.monotonic() + backoff_s > deadline_s:
                return None, None, attempts
            await asyncio.sleep(backoff_s * (0.5 + self.rng.random()))
            backoff_s = min(backoff_s * 2, BACKOFF_S_MAX)

    async def command(self, http: Http, kind: str, path: str, body: dict[str, Any]) -> Record:
        """One command; its transaction id in the body, or (opening an account, whose body
        takes none) as an Idempotency-Key."""
        key = body.pop("idempotency_key", None)
        record = Record(kind, body.get("transaction_id") or key, single=True)
        self.records.append(record)
        started_s = time.monotonic()
        record.status, record.reply, record.attempts = await self.call(http, path, body, key)
        record.latency_s = time.monotonic() - started_s
        if kind == "open" and record.acknowledged:
            record.transaction_id = str(record.reply["account_id"])  # the command's id
        record.done = True
        if record.status == 409 and (record.reply or {}).get("code") == "transaction_conflict":
            self.unexpected.append(f"{kind} {record.transaction_id}: conflict on its own retry")
        return record

    async def batch(self, http: Http, items: list[dict[str, Any]]) -> list[Record]:
        records = [Record(item["type"], item["transaction_id"], single=False) for item in items]
        self.records.extend(records)
        started_s = time.monotonic()
        status, reply, attempts = await self.call(http, "/v1/batches", {"items": items})
        latency_s = time.monotonic() - started_s
        results = reply.get("results") if status == 200 and isinstance(reply, dict) else None
        for k, record in enumerate(records):
            record.latency_s, record.attempts, record.done = latency_s, attempts, True
            if results is None:
                # The whole batch refused (4xx) or given up: refused items, or unknown.
                record.status = status
                continue
            result = results[k]
            record.reply = result
            record.status = {"ok": 200, "held_for_review": 202}.get(result["status"], 409)
        return records

    # Setup --------------------------------------------------------------------------------

    async def open_accounts(self, per_currency: int, run_id: str) -> None:
        http = Http(self.command_url, self.token)
        try:
            for currency in CURRENCIES:
                ids = self.accounts.setdefault(currency, [])
                for k in range(per_currency):
                    body = {"owner": f"Faults {currency} {k}", "branch": BRANCH}
                    body |= {"currency": currency, "idempotency_key": _uuid()}
                    record = await self.command(http, "open", "/v1/accounts", body)
                    if not record.acknowledged:
                        raise RuntimeError(f"opening an account failed: {record.reply}")
                    ids.append(str(record.reply["account_id"]))
            for start in range(0, sum(len(v) for v in self.accounts.values()), 500):
                everyone = [(c, a) for c, ids in self.accounts.items() for a in ids]
                items = [
                    self._movement("deposit", c, a, FUNDING_MINOR)
                    for c, a in everyone[start : start + 500]
                ]
                for record in await self.batch(http, items):
                    if not record.acknowledged:
                        raise RuntimeError(f"funding failed: {record.reply}")
        finally:
            http.close()
        del run_id

    # The mix ------------------------------------------------------------------------------

    async def client(self, stop: asyncio.Event) -> None:
        http = Http(self.command_url, self.token)
        try:
            while not stop.is_set():
                await self.gate.wait()
                if stop.is_set():
                    return
                if not self.gate.is_set():
                    # Woken by a `set` that a `quiet` undid before this task ran: `quiet`
                    # has already looked at `in_flight`, so going on would race its check.
                    continue
                self.in_flight += 1
                try:
                    await self.one(http)
                finally:
                    self.in_flight -= 1
                await asyncio.sleep(self.pause_s * (0.5 + self.rng.random()))
        finally:
            http.close()

    async def one(self, http: Http) -> None:
        draw = self.rng.random()
        if draw < 0.45:
            item = self._transfer()
            await self.command(http, "transfer", "/v1/transfers", _single(item))
        elif draw < 0.60:
            item = self._movement("deposit", *self._account(), self._amount())
            await self._single_movement(http, item)
        elif draw < 0.75:
            # Now and then more than any account holds: refused, and nothing may remain.
            minor = TOO_MUCH_MINOR if self.rng.random() < TOO_MUCH_SHARE else self._amount()
            item = self._movement("withdrawal", *self._account(), minor)
            await self._single_movement(http, item)
        elif draw < 0.85:
            await self._place_hold(http)
        elif draw < 0.90:
            await self._end_hold(http)
        else:
            items = [self._item() for _ in range(SMALL_BATCH_ITEMS)]
            await self.batch(http, items)

    async def big_batch(self) -> list[Record]:
        http = Http(self.command_url, self.token)
        try:
            return await self.batch(http, [self._item() for _ in range(BIG_BATCH_ITEMS)])
        finally:
            http.close()

    async def _single_movement(self, http: Http, item: dict[str, Any]) -> None:
        route = "deposits" if item["type"] == "deposit" else "withdrawals"
        path = f"/v1/accounts/{item['account_id']}/{route}"
        await self.command(http, item["type"], path, _single(item))

    async def _place_hold(self, http: Http) -> None:
        currency, account_id = self._account()
        to_account_id = None
        if self.rng.random() < 0.5:
            to_account_id = self.rng.choice([a for a in self.accounts[currency] if a != account_id])
        body: dict[str, Any] = {"account_id": account_id, "currency": currency}
        body |= {"amount": _major(self._amount()), "transaction_id": _uuid()}
        if to_account_id is not None:
            body["to_account_id"] = to_account_id
        record = await self.command(http, "hold", "/v1/holds", body)
        if record.acknowledged:
            self.holds.append(Hold(record.transaction_id, account_id, to_account_id))

    async def _end_hold(self, http: Http) -> None:
        if not self.holds:
            return
        hold = self.holds.pop(self.rng.randrange(len(self.holds)))
        path = f"/v1/holds/{hold.hold_id}"
        if self.rng.random() < 0.7:
            kind = "capture_to" if hold.to_account_id else "capture"
            await self.command(http, kind, f"{path}/capture", {"transaction_id": _uuid()})
        else:
            body = {"reason": "customer cancelled", "transaction_id": _uuid()}
            await self.command(http, "void", f"{path}/void", body)

    def _item(self) -> dict[str, Any]:
        draw = self.rng.random()
        if draw < 0.7:
            return self._transfer()
        kind = "deposit" if draw < 0.85 else "withdrawal"
        too_much = kind == "withdrawal" and self.rng.random() < TOO_MUCH_SHARE
        minor = TOO_MUCH_MINOR if too_much else self._amount()
        return self._movement(kind, *self._account(), minor)

    def _transfer(self) -> dict[str, Any]:
        currency = self.rng.choice(CURRENCIES)
        source, target = self.rng.sample(self.accounts[currency], 2)
        amount = LARGE_MINOR if self.rng.random() < LARGE_SHARE else self._amount()
        return {
            "type": "transfer",
            "from_account_id": source,
            "to_account_id": target,
            "amount": _major(amount),
            "currency": currency,
            "transaction_id": _uuid(),
        }

    def _movement(self, kind: str, currency: str, account_id: str, minor: int) -> dict[str, Any]:
        return {
            "type": kind,
            "account_id": account_id,
            "amount": _major(minor),
            "currency": currency,
            "channel": "wire",
            "transaction_id": _uuid(),
        }

    def _account(self) -> tuple[str, str]:
        currency = self.rng.choice(CURRENCIES)
        return currency, self.rng.choice(self.accounts[currency])

    def _amount(self) -> int:
        return self.rng.randint(1, AMOUNT_MINOR_MAX)

    async def quiet(self, timeout_s: float) -> bool:
        """Pause the clients and wait until none has a command out (retries included)."""
        self.gate.clear()
        deadline_s = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline_s:
            await asyncio.sleep(0.05)
        return self.in_flight == 0


def _single(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("type", "account_id")}


def _major(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def _uuid() -> str:
    return str(uuid.uuid4())


def _json(reply: bytes) -> Any:
    with contextlib.suppress(orjson.JSONDecodeError):
        return orjson.loads(reply)
    return None
