"""Several processes sharing one job, as on a bigger machine: the command API served by two
uvicorn worker processes (each with its own group committer and accounts in memory), and
two `vigil workers` processes sharing the ledger topic's partitions. Money is conserved,
a key sent to both processes at once takes effect once, and the read models end equal to
the event store, nothing applied twice."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import psutil
import pytest

from application.ledger import Ledger
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.kafka.consumer import PARTITIONS_ASSIGNED_GAUGE
from tests.conftest import ApiServer, Databases, free_port, start_api
from tests.e2e.system import System, eventually, running_system
from tests.e2e.test_pipeline import (
    open_account,
    read_models_agree_with_the_store,
    wait_converged,
)

pytestmark = pytest.mark.e2e

API_WORKERS = 2
ACCOUNTS = 8
FUNDING = Decimal("500.00")
MOVES = 240
CLIENTS = 12


@pytest.fixture(scope="module")
def two_process_api(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    work = tmp_path_factory.mktemp("api-workers")
    settings = databases.settings_for(databases.fresh(), work / "var")
    server = start_api("command", settings, work / "logs", workers=API_WORKERS)
    yield server
    server.stop()


def _serving_processes(server: ApiServer) -> list[psutil.Process]:
    """The worker processes under the API's supervisor (not multiprocessing's helpers)."""
    children = psutil.Process(server.process.pid).children()
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


def _headers(server: ApiServer, **extra: str) -> dict[str, str]:
    from interfaces.api.http.tokens import issue_token

    token = issue_token(server.settings, role="teller", branch="001", subject="multi-process")
    return {"Authorization": f"Bearer {token}", **extra}


def _open_funded(server: ApiServer, client: httpx.Client) -> str:
    opened = client.post(
        f"{server.url}/v1/accounts",
        json={"owner": "Two Processes", "branch": "001", "currency": "GBP"},
        headers=_headers(server),
    )
    assert opened.status_code == 201, opened.text
    account_id = str(opened.json()["account_id"])
    funded = client.post(
        f"{server.url}/v1/accounts/{account_id}/deposits",
        json={"amount": str(FUNDING), "currency": "GBP"},
        headers=_headers(server),
    )
    assert funded.status_code == 201, funded.text
    return account_id


def _balance(ledger: Ledger, account_id: str) -> int:
    return ledger.get_account(uuid.UUID(account_id)).balance_minor


def test_the_command_api_serves_from_two_processes(two_process_api: ApiServer) -> None:
    def both() -> list[psutil.Process] | None:
        found = _serving_processes(two_process_api)
        return found if len(found) == API_WORKERS else None

    workers = eventually(both, 30, "two API worker processes")
    assert all(worker.is_running() for worker in workers)


def test_crossing_transfers_on_two_processes_conserve_money(two_process_api: ApiServer) -> None:
    """Transfers both ways between the same few accounts, from many connections (the kernel
    spreads them over both processes): every acknowledged one is applied once, every refused
    one not at all, and the total is what was deposited."""
    with httpx.Client(timeout=30) as client:
        accounts = [_open_funded(two_process_api, client) for _ in range(ACCOUNTS)]
    rng = random.Random(7)
    moves = []
    for _ in range(MOVES):
        source, target = rng.sample(accounts, 2)
        moves.append((source, target, rng.randint(1, 9_000)))

    def send(move: tuple[str, str, int]) -> tuple[tuple[str, str, int], int, str]:
        source, target, minor = move
        # A new connection each time, so that both processes get their share.
        with httpx.Client(timeout=30) as client:
            reply = client.post(
                f"{two_process_api.url}/v1/transfers",
                json={
                    "from_account_id": source,
                    "to_account_id": target,
                    "amount": f"{Decimal(minor) / 100:.2f}",
                    "currency": "GBP",
                },
                headers=_headers(two_process_api),
            )
        code = reply.json().get("code", "") if reply.status_code >= 400 else ""
        return move, reply.status_code, code

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(send, moves))

    statuses = {status for _, status, _ in results}
    assert statuses <= {201, 409, 503}, results
    refused = {code for _, status, code in results if status != 201}
    assert refused <= {"insufficient_funds", "unavailable"}, refused
    assert sum(status == 201 for _, status, _ in results) > MOVES // 2
    expected = {account: int(FUNDING * 100) for account in accounts}
    for (source, target, minor), status, _ in results:
        if status == 201:
            expected[source] -= minor
            expected[target] += minor
    ledger = open_ledger(two_process_api.settings)
    try:
        found = {account: _balance(ledger, account) for account in accounts}
    finally:
        ledger.close()
    assert found == expected
    assert sum(found.values()) == ACCOUNTS * int(FUNDING * 100)
    assert min(found.values()) >= 0  # no overdraft was granted


def test_one_key_sent_to_both_processes_at_once_takes_effect_once(
    two_process_api: ApiServer,
) -> None:
    with httpx.Client(timeout=30) as client:
        account = _open_funded(two_process_api, client)
    key = f"both-{uuid.uuid4()}"

    def send(_: int) -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.post(
                f"{two_process_api.url}/v1/accounts/{account}/deposits",
                json={"amount": "12.34", "currency": "GBP"},
                headers=_headers(two_process_api, **{"Idempotency-Key": key}),
            )

    with ThreadPoolExecutor(CLIENTS) as pool:
        replies = list(pool.map(send, range(CLIENTS * 2)))
    ok = [r for r in replies if r.status_code in (200, 201)]
    assert ok, [r.text for r in replies]
    # A retry may meet the first one still in flight (409 transaction_conflict or 503):
    # never a second deposit.
    assert all(r.status_code in (200, 201, 409, 503) for r in replies), [r.text for r in replies]
    assert len({r.json()["transaction_id"] for r in ok}) == 1
    assert len({r.json()["balance"] for r in ok}) == 1
    ledger = open_ledger(two_process_api.settings)
    try:
        assert _balance(ledger, account) == int(FUNDING * 100) + 1234
    finally:
        ledger.close()


# Two projection workers processes ---------------------------------------------------------


@pytest.fixture(scope="module")
def shared_pipeline(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[System, dict[str, int]]]:
    ports = {"workers-a": free_port(), "workers-b": free_port()}
    with running_system(
        databases, tmp_path_factory.mktemp("two-workers"), processes=("relay",)
    ) as system:
        for name, port in ports.items():
            system.start(name, ("workers",), metrics_port=port)
        yield system, ports


def _partitions(port: int) -> int | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    found = re.search(rf"^{PARTITIONS_ASSIGNED_GAUGE} (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else None


def _movements(system: System, client: httpx.Client, accounts: list[str], count: int) -> None:
    rng = random.Random(count)
    for _ in range(count):
        source, target = rng.sample(accounts, 2)
        reply = client.post(
            f"{system.command.url}/v1/transfers",
            json={
                "from_account_id": source,
                "to_account_id": target,
                "amount": "1.00",
                "currency": "GBP",
            },
            headers=system.headers("teller"),
        )
        assert reply.status_code == 201, reply.text


def test_two_workers_processes_share_the_partitions_and_apply_each_event_once(
    shared_pipeline: tuple[System, dict[str, int]],
) -> None:
    system, ports = shared_pipeline
    partitions = system.settings.topic_partitions

    def shared() -> dict[str, int] | None:
        held = {name: _partitions(port) for name, port in ports.items()}
        if all(held.values()) and sum(v or 0 for v in held.values()) == partitions:
            return {name: v or 0 for name, v in held.items()}
        return None

    with httpx.Client(timeout=30) as client:
        accounts = [str(open_account(system, client)) for _ in range(12)]
        held = eventually(shared, 60, "both workers processes holding partitions", system)
        assert all(count >= 1 for count in held.values()), held
        _movements(system, client, accounts, 150)
        wait_converged(system, client)
        read_models_agree_with_the_store(system.settings)

        # One of them dies: the other takes every partition and goes on, still exactly once.
        system.kill("workers-b")
        alone = {"workers-a": ports["workers-a"]}
        eventually(
            lambda: True if _partitions(alone["workers-a"]) == partitions else None,
            60,
            "the surviving workers process holding every partition",
            system,
        )
        _movements(system, client, accounts, 150)
        wait_converged(system, client)
        read_models_agree_with_the_store(system.settings)
