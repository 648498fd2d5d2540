"""The whole pipeline as real processes: command API → PostgreSQL → relay → tansu broker →
projection workers → read models → query API. Crashes, replays and a broker restart end
in read models equal to what the event store says."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from domain.money import format_amount
from infrastructure.kafka.topics import ledger_events_topic
from infrastructure.ops.embedded import start_broker
from infrastructure.readmodels.schema import ALL_PROJECTIONS
from infrastructure.settings import Settings
from infrastructure.workers.projections import group_id
from tests.conftest import Databases
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

CONVERGE_TIMEOUT_S = 60.0
MOVEMENTS = ("Deposited", "Withdrawn", "TransferredIn", "TransferredOut")
# The KPI each event type counts in (projections/ledger.py; a transfer counts once).
KPI_EVENTS = {
    "AccountOpened": "accounts_opened",
    "Deposited": "deposits",
    "Withdrawn": "withdrawals",
    "TransferredOut": "transfers",
}


@pytest.fixture(scope="module")
def pipeline(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with (
        running_system(
            databases, tmp_path_factory.mktemp("pipeline"), processes=("relay", "workers")
        ) as system,
        httpx.Client(timeout=10) as http,
    ):
        # Consumer groups take a few seconds to form: measure nothing before they have.
        open_account(system, http)
        wait_converged(system, http)
        yield system


def open_account(system: System, http: httpx.Client, balance: str = "1000.00") -> UUID:
    reply = http.post(
        f"{system.command.url}/v1/accounts",
        json={"owner": "System Test", "branch": "001", "currency": "GBP"},
        headers=system.headers("teller"),
    )
    assert reply.status_code == 201, reply.text
    account_id = UUID(reply.json()["account_id"])
    deposit = http.post(
        f"{system.command.url}/v1/accounts/{account_id}/deposits",
        json={"amount": balance, "currency": "GBP"},
        headers=system.headers("teller"),
    )
    assert deposit.status_code == 201, deposit.text
    return account_id


def wait_converged(system: System, http: httpx.Client) -> dict[str, Any]:
    """Until every projection's mark is the store's head."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        state = http.get(
            f"{system.query.url}/v1/projections", headers=system.headers("admin")
        ).json()
        if state["head"] and all(item["position"] == state["head"] for item in state["items"]):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"projections did not converge: {state}\n{system.warnings()}")
        time.sleep(0.2)


def read_models_agree_with_the_store(settings: Settings) -> dict[str, Any]:
    """Every account's row and statement against the events; returns a snapshot."""
    with psycopg.connect(settings.resolved_database_url()) as conn:
        accounts = conn.execute(
            "SELECT account_id, balance_minor, version, status FROM readmodel.accounts"
        ).fetchall()
        lines = conn.execute(
            "SELECT account_id, version, direction, amount_minor, balance_after_minor "
            "FROM readmodel.transactions ORDER BY account_id, version"
        ).fetchall()
        heads = dict(
            conn.execute(
                "SELECT originator_id, max(originator_version) FROM ledger_events "
                "GROUP BY originator_id"
            ).fetchall()
        )
        kpis = conn.execute(
            "SELECT metric, sum(count), sum(sum_minor) FROM readmodel.kpis_hourly "
            "GROUP BY metric ORDER BY metric"
        ).fetchall()
        movement_events = conn.execute(
            "SELECT count(*) FROM ledger_events WHERE topic LIKE ANY(%s)",
            ([f"%.{name}" for name in MOVEMENTS],),
        ).fetchone()
        kpi_events = {
            metric: conn.execute(
                "SELECT count(*) FROM ledger_events WHERE topic LIKE %s", (f"%.{event_type}",)
            ).fetchone()
            for event_type, metric in KPI_EVENTS.items()
        }
    assert {a[0]: a[2] for a in accounts} == heads, "every account at its latest version"
    assert movement_events is not None
    assert len(lines) == movement_events[0], "one statement line per movement, none doubled"
    by_account: dict[UUID, int] = {}
    for account_id, _, direction, amount, balance_after in lines:
        running = by_account.get(account_id, 0) + (amount if direction == "credit" else -amount)
        assert running == balance_after, "statement lines chain to their balances"
        by_account[account_id] = running
    for account_id, balance, _, _ in accounts:
        assert by_account.get(account_id, 0) == balance, "statement sums to the balance"
    kpi_counts = {metric: count for metric, count, _ in kpis}
    assert kpi_counts == {m: row[0] for m, row in kpi_events.items() if row and row[0]}, (
        "every event counted once in the KPIs"
    )
    return {"accounts": sorted(accounts), "lines": lines, "kpis": kpis}


def test_a_deposit_is_visible_in_the_query_api_and_the_lag_is_measured(
    pipeline: System,
) -> None:
    lags_s = []
    with httpx.Client(timeout=10) as http:
        account_id = open_account(pipeline, http, "5.00")
        for _ in range(50):
            reply = http.post(
                f"{pipeline.command.url}/v1/accounts/{account_id}/deposits",
                json={"amount": "1.00", "currency": "GBP"},
                headers=pipeline.headers("teller"),
            )
            version = reply.json()["version"]
            started = time.perf_counter()
            seen = http.get(
                f"{pipeline.query.url}/v1/accounts/{account_id}",
                params={"min_version": version},
                headers=pipeline.headers("viewer"),
            )
            lags_s.append(time.perf_counter() - started)
            assert seen.status_code == 200, seen.text
            assert seen.json()["projected_version"] >= version
        assert seen.json()["balance"] == "55.00"
    print(
        f"\ncommand reply to projection visible: p50 {statistics.median(lags_s) * 1000:.1f} ms, "
        f"max {max(lags_s) * 1000:.1f} ms over {len(lags_s)}"
    )


def test_two_thousand_random_commands_end_with_projections_equal_to_the_store(
    pipeline: System,
) -> None:
    rng = random.Random(20261128)
    with httpx.Client(timeout=30) as http:
        accounts = [open_account(pipeline, http, "500.00") for _ in range(50)]
        items: list[dict[str, Any]] = []
        for _ in range(2000):
            kind = rng.choice(["deposit", "withdrawal", "transfer", "transfer"])
            amount = format_amount(rng.randint(1, 40_000), "GBP")
            if kind == "transfer":
                source, target = rng.sample(accounts, 2)
                items.append(
                    {
                        "type": "transfer",
                        "from_account_id": str(source),
                        "to_account_id": str(target),
                        "amount": amount,
                        "currency": "GBP",
                    }
                )
            else:
                items.append(
                    {
                        "type": kind,
                        "account_id": str(rng.choice(accounts)),
                        "amount": amount,
                        "currency": "GBP",
                    }
                )
        for start in range(0, len(items), 200):
            reply = http.post(
                f"{pipeline.command.url}/v1/batches",
                json={"items": items[start : start + 200]},
                headers=pipeline.headers("teller"),
            )
            assert reply.status_code == 200, reply.text
        wait_converged(pipeline, http)
    read_models_agree_with_the_store(pipeline.settings)


def committed_offsets(settings: Settings, group: str) -> dict[int, int | None]:
    """The group's committed offset per partition of the ledger events topic, asked by a
    consumer of the group that subscribes to nothing (so it never joins the group)."""

    async def fetch() -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.resolved_kafka_bootstrap(),
            group_id=group,
            enable_auto_commit=False,
            request_timeout_ms=10_000,
        )
        await consumer.start()
        try:
            topic = ledger_events_topic(settings)
            await consumer.topics()  # loads the metadata partitions_for_topic reads
            return {
                number: await consumer.committed(TopicPartition(topic, number))
                for number in consumer.partitions_for_topic(topic)
            }
        finally:
            await consumer.stop()

    return asyncio.run(fetch())


def relayed_end_offsets(settings: Settings) -> dict[int, int]:
    """Where each partition ends, as the relay recorded the broker's acknowledgements."""
    with psycopg.connect(settings.resolved_database_url()) as conn:
        rows = conn.execute(
            "SELECT partition, last_offset + 1 FROM relay_partition_offsets WHERE topic = %s",
            (ledger_events_topic(settings),),
        ).fetchall()
    return dict(rows)


def wait_committed_to_the_end(system: System, group: str) -> None:
    ends = relayed_end_offsets(system.settings)

    def at_the_end() -> bool | None:
        committed = committed_offsets(system.settings, group)
        return True if committed == {p: ends.get(p, 0) for p in committed} else None

    eventually(at_the_end, CONVERGE_TIMEOUT_S, f"group {group} committed to the end", system)


def test_the_workers_process_reads_with_one_consumer_group_for_all_its_projections(
    pipeline: System,
) -> None:
    """Each record fetched once for all six projections, each of them applying every event
    once: every mark at the store's head, the read models equal to the store."""
    with httpx.Client(timeout=30) as http:
        accounts = [open_account(pipeline, http) for _ in range(5)]
        items = [
            {"type": "deposit", "account_id": str(a), "amount": "2.00", "currency": "GBP"}
            for a in accounts * 100
        ]
        reply = http.post(
            f"{pipeline.command.url}/v1/batches",
            json={"items": items},
            headers=pipeline.headers("teller"),
        )
        assert reply.status_code == 200, reply.text
        state = wait_converged(pipeline, http)
    assert {item["name"] for item in state["items"]} == set(ALL_PROJECTIONS)
    read_models_agree_with_the_store(pipeline.settings)
    settings = pipeline.settings
    wait_committed_to_the_end(pipeline, group_id(settings, ALL_PROJECTIONS))
    for name in ALL_PROJECTIONS:
        assert set(committed_offsets(settings, group_id(settings, [name])).values()) == {None}


def test_a_one_projection_process_keeps_its_group_and_its_replay_changes_nothing(
    pipeline: System,
) -> None:
    """`vigil project balances` beside the workers: its group starts from the beginning of
    the topic, and tracking makes everything it reads a duplicate."""
    with httpx.Client(timeout=30) as http:
        open_account(pipeline, http)
        wait_converged(pipeline, http)
    before = read_models_agree_with_the_store(pipeline.settings)
    pipeline.start("project_balances", ("project", "balances"))
    try:
        wait_committed_to_the_end(pipeline, group_id(pipeline.settings, ["balances"]))
    finally:
        pipeline.kill("project_balances")
    assert read_models_agree_with_the_store(pipeline.settings) == before


def test_killed_workers_and_relay_restart_into_the_same_read_models(pipeline: System) -> None:
    with httpx.Client(timeout=30) as http:
        accounts = [open_account(pipeline, http) for _ in range(10)]

        def burst(count: int) -> None:
            items = [
                {
                    "type": "deposit",
                    "account_id": str(accounts[i % 10]),
                    "amount": "0.10",
                    "currency": "GBP",
                }
                for i in range(count)
            ]
            assert (
                http.post(
                    f"{pipeline.command.url}/v1/batches",
                    json={"items": items},
                    headers=pipeline.headers("teller"),
                ).status_code
                == 200
            )

        burst(300)
        pipeline.kill("workers")  # SIGKILL, mid-stream
        burst(300)
        pipeline.kill("relay")
        burst(300)
        pipeline.start("workers")
        burst(100)
        pipeline.start("relay")
        burst(100)
        wait_converged(pipeline, http)
    read_models_agree_with_the_store(pipeline.settings)


def test_republishing_everything_from_zero_changes_no_read_model(pipeline: System) -> None:
    with httpx.Client(timeout=30) as http:
        open_account(pipeline, http)
        wait_converged(pipeline, http)
        before = read_models_agree_with_the_store(pipeline.settings)
        pipeline.kill("relay")
        with psycopg.connect(pipeline.settings.resolved_database_url(), autocommit=True) as conn:
            conn.execute("UPDATE relay_state SET position = 0")
        pipeline.start("relay")
        time.sleep(3)  # let it republish the whole store
        wait_converged(pipeline, http)
    assert read_models_agree_with_the_store(pipeline.settings) == before


def test_a_broker_restart_that_loses_its_topics_converges_to_the_store(
    pipeline: System,
) -> None:
    with httpx.Client(timeout=30) as http:
        accounts = [open_account(pipeline, http) for _ in range(5)]
        wait_converged(pipeline, http)
        port = int(pipeline.broker.bootstrap.rsplit(":", 1)[1])
        pipeline.broker.stop()
        items = [
            {"type": "deposit", "account_id": str(a), "amount": "1.00", "currency": "GBP"}
            for a in accounts * 20
        ]
        # Commands keep coming while the broker is down and after it is back, empty.
        assert (
            http.post(
                f"{pipeline.command.url}/v1/batches",
                json={"items": items},
                headers=pipeline.headers("teller"),
            ).status_code
            == 200
        )
        pipeline.broker = start_broker(pipeline.log_dir.parent / "broker", port=port)
        assert (
            http.post(
                f"{pipeline.command.url}/v1/batches",
                json={"items": items},
                headers=pipeline.headers("teller"),
            ).status_code
            == 200
        )
        wait_converged(pipeline, http)
    read_models_agree_with_the_store(pipeline.settings)
