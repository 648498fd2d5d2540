"""The load `make bench` puts on the system: the replies of one phase (`Tally`), the three load
generators (`batch_load`, `single_load`, `paced_load`) and the setup that opens and funds the
accounts they use. Used by bench.py, which imports it as a sibling module.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baseline import percentile_ms
from bench_system import TRANSPORT_ERRORS, BenchFailed, Http, reply_code

BRANCH, CURRENCY = "001", "GBP"
BATCH_ITEMS = 1_000  # VIGIL_BATCH_ITEMS_MAX's default
PIPELINE_TICK_S = 0.1
PIPELINE_IN_FLIGHT_MAX = 8  # batches; a tick finding all 8 still out is skipped and counted
SETUP_CLIENTS, SETUP_BATCHES_IN_FLIGHT = 32, 4
ERROR_PAUSE_S = 0.1  # a client that failed waits, so a dead server is not hammered
# Below the 5,000 of the pass-through and dormant-account rules and the cash rules' channel:
# funding raises no alerts, and transfers of at most 5.00 rarely run an account dry.
FUNDING_AMOUNT = "4000.00"
TRANSFER_MINOR_MAX = 500


@dataclass
class Tally:
    """One phase's replies: `ok` counts transfers (batches) or commands (single routes)."""

    ok: int = 0
    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # the ledger's answers, by code
    errors: Counter[str] = field(default_factory=Counter)  # failed requests

    def latency(self) -> dict[str, float | None]:
        return {f"p{p}_ms": percentile_ms(self.latencies_ms, p) for p in (50, 95, 99)}


def _amount(rng: random.Random) -> str:
    minor = rng.randint(1, TRANSFER_MINOR_MAX)
    return f"{minor // 100}.{minor % 100:02d}"


def _transfers(rng: random.Random, ids: list[str], count: int) -> bytes:
    items = []
    for _ in range(count):
        source, destination = rng.sample(ids, 2)
        items.append(
            {
                "type": "transfer",
                "from_account_id": source,
                "to_account_id": destination,
                "amount": _amount(rng),
                "currency": CURRENCY,
            }
        )
    return orjson.dumps({"items": items})


async def _post_batch(http: Http, body: bytes, tally: Tally) -> None:
    sent_s = time.perf_counter()
    try:
        status, reply = await http.request("POST", "/v1/batches", body, key=uuid.uuid4().hex)
    except TRANSPORT_ERRORS as error:
        tally.errors[type(error).__name__] += 1
        await asyncio.sleep(ERROR_PAUSE_S)
        return
    tally.requests += 1
    if status != 200:
        tally.errors[reply_code(status, reply)] += 1
        return
    tally.latencies_ms.append((time.perf_counter() - sent_s) * 1000)
    for result in orjson.loads(reply)["results"]:
        if result["status"] == "ok":
            tally.ok += 1
        else:
            tally.refused[result["code"]] += 1


async def _post_command(http: Http, path: str, body: dict[str, Any], tally: Tally) -> None:
    sent_s = time.perf_counter()
    try:
        status, reply = await http.request("POST", path, orjson.dumps(body), key=uuid.uuid4().hex)
    except TRANSPORT_ERRORS as error:
        tally.errors[type(error).__name__] += 1
        await asyncio.sleep(ERROR_PAUSE_S)
        return
    tally.requests += 1
    if status == 201:
        tally.ok += 1
        tally.latencies_ms.append((time.perf_counter() - sent_s) * 1000)
    elif 400 <= status < 500:
        tally.refused[reply_code(status, reply)] += 1
    else:
        tally.errors[reply_code(status, reply)] += 1


async def _clients(
    url: str,
    token: str,
    clients: int,
    deadline_s: float,
    send_one: Callable[[random.Random, Http], Awaitable[None]],
) -> None:
    """`clients` closed-loop clients, each with its own connection, sending until the deadline."""

    async def client() -> None:
        rng, http = random.Random(), Http(url, token)
        try:
            while time.monotonic() < deadline_s:
                await send_one(rng, http)
        finally:
            http.close()

    await asyncio.gather(*(client() for _ in range(clients)))


async def batch_load(
    url: str, token: str, ids: list[str], clients: int, deadline_s: float, tally: Tally
) -> None:
    async def send_batch(rng: random.Random, http: Http) -> None:
        await _post_batch(http, _transfers(rng, ids, BATCH_ITEMS), tally)

    await _clients(url, token, clients, deadline_s, send_batch)


async def single_load(
    url: str, token: str, ids: list[str], clients: int, deadline_s: float, tally: Tally
) -> None:
    async def send_command(rng: random.Random, http: Http) -> None:
        kind = rng.randrange(3)  # deposits, withdrawals and transfers, a third each
        body: dict[str, Any] = {"amount": _amount(rng), "currency": CURRENCY}
        if kind == 2:
            source, destination = rng.sample(ids, 2)
            body |= {"from_account_id": source, "to_account_id": destination}
            await _post_command(http, "/v1/transfers", body, tally)
            return
        route = "deposits" if kind == 0 else "withdrawals"
        path = f"/v1/accounts/{rng.choice(ids)}/{route}"
        await _post_command(http, path, body | {"channel": "wire"}, tally)

    await _clients(url, token, clients, deadline_s, send_command)


async def paced_load(
    url: str, token: str, ids: list[str], rate: int, deadline_s: float, tally: Tally
) -> int:
    """`rate` transfers/s as one batch per tick, open loop; returns the ticks skipped because
    PIPELINE_IN_FLIGHT_MAX batches were still waiting for their replies."""
    free: asyncio.Queue[Http] = asyncio.Queue()
    for _ in range(PIPELINE_IN_FLIGHT_MAX):
        free.put_nowait(Http(url, token))
    rng, per_tick, skipped = random.Random(), max(2, round(rate * PIPELINE_TICK_S)), 0
    in_flight: set[asyncio.Task[None]] = set()

    async def send(http: Http, body: bytes) -> None:
        try:
            await _post_batch(http, body, tally)
        finally:
            free.put_nowait(http)

    started_s = time.monotonic()
    for tick in range(int((deadline_s - started_s) / PIPELINE_TICK_S)):
        await asyncio.sleep(max(0.0, started_s + tick * PIPELINE_TICK_S - time.monotonic()))
        if free.empty():
            skipped += 1
            continue
        task = asyncio.create_task(send(free.get_nowait(), _transfers(rng, ids, per_tick)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    while not free.empty():
        free.get_nowait().close()
    return skipped


async def open_accounts(url: str, token: str, count: int, run_id: str) -> list[str]:
    ids: list[str] = []
    failures: Counter[str] = Counter()
    indexes = iter(range(count))  # shared: each client takes the next index

    async def client() -> None:
        http = Http(url, token)
        try:
            for k in indexes:
                body = {"owner": f"Bench {k}", "branch": BRANCH, "currency": CURRENCY}
                key = f"bench-{run_id}-open-{k}"
                try:
                    status, reply = await http.request(
                        "POST", "/v1/accounts", orjson.dumps(body), key
                    )
                except TRANSPORT_ERRORS as error:
                    failures[type(error).__name__] += 1
                    return
                if status == 201:
                    ids.append(str(orjson.loads(reply)["account_id"]))
                else:
                    failures[reply_code(status, reply)] += 1
        finally:
            http.close()

    await asyncio.gather(*(client() for _ in range(SETUP_CLIENTS)))
    if failures:
        raise BenchFailed(f"opening accounts failed: {dict(failures)}")
    return ids


async def fund_accounts(url: str, token: str, ids: list[str]) -> None:
    chunks = [ids[k : k + BATCH_ITEMS] for k in range(0, len(ids), BATCH_ITEMS)]
    tally = Tally()

    async def client(mine: list[list[str]]) -> None:
        http = Http(url, token)
        try:
            for chunk in mine:
                items = [
                    {"type": "deposit", "account_id": account_id, "amount": FUNDING_AMOUNT}
                    | {"currency": CURRENCY, "channel": "wire"}
                    for account_id in chunk
                ]
                await _post_batch(http, orjson.dumps({"items": items}), tally)
        finally:
            http.close()

    clients = range(SETUP_BATCHES_IN_FLIGHT)
    await asyncio.gather(*(client(chunks[k::SETUP_BATCHES_IN_FLIGHT]) for k in clients))
    if tally.ok != len(ids):
        raise BenchFailed(f"funding failed: {dict(tally.refused)} {dict(tally.errors)}")
