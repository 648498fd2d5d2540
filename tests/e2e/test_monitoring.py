"""Monitoring end to end, as real processes: a scripted scenario over HTTP for each rule
raises exactly the expected alerts (query API, `vigil.alerts`, cases) and nothing else;
every alert's evidence re-runs to the same verdict; a rebuild from zero gives the same
alerts. The rules run on a test configuration whose windows are seconds, not days."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer

from infrastructure.kafka.topics import alerts_topic, ledger_events_topic
from tests.conftest import Databases
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

# Seconds, not days: each scenario runs in well under these windows, the dormant one
# waits them out. Amounts keep their defaults (GBP). Screening in the money path is off
# for the watchlist here: these scenarios are about the rules that run after a movement
# posts (a transfer to a listed account would otherwise wait for compliance).
TEST_RULES = """
[screening]
watchlisted = false
[structuring]
window_s = 60
[velocity]
count_max = 5
count_window_s = 60
outflow_window_s = 60
[pass_through]
window_s = 60
[new_account_outflow]
window_s = 60
[dormant_reactivation]
idle_s = 4
"""
WAIT_S = 60.0


@pytest.fixture(scope="module")
def system(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    work = tmp_path_factory.mktemp("monitoring")
    rules = work / "rules.toml"
    rules.write_text(TEST_RULES)
    with running_system(databases, work, rules_config=Path(rules)) as running:
        yield running


class Teller:
    def __init__(self, system: System, http: httpx.Client) -> None:
        self.system = system
        self.http = http
        self.headers = system.headers("teller")

    def open(self, owner: str) -> str:
        reply = self.http.post(
            f"{self.system.command.url}/v1/accounts",
            json={"owner": owner, "branch": "001", "currency": "GBP"},
            headers=self.headers,
        )
        assert reply.status_code == 201, reply.text
        return str(reply.json()["account_id"])

    def move(self, kind: str, account: str, amount: str, channel: str = "card") -> None:
        route = "deposits" if kind == "deposit" else "withdrawals"
        reply = self.http.post(
            f"{self.system.command.url}/v1/accounts/{account}/{route}",
            json={"amount": amount, "currency": "GBP", "channel": channel},
            headers=self.headers,
        )
        assert reply.status_code == 201, reply.text

    def transfer(self, source: str, target: str, amount: str) -> None:
        reply = self.http.post(
            f"{self.system.command.url}/v1/transfers",
            json={"from_account_id": source, "to_account_id": target, "amount": amount,
                  "currency": "GBP"},
            headers=self.headers,
        )  # fmt: skip
        assert reply.status_code == 201, reply.text


def run_scenarios(system: System, http: httpx.Client) -> dict[str, str]:
    """Each rule's pattern on accounts of its own; the rule -> account expected to fire."""
    teller = Teller(system, http)
    expected: dict[str, str] = {}

    expected["large_transaction"] = large = teller.open("Large")
    teller.move("deposit", large, "50000.00", channel="wire")

    expected["structuring"] = smurf = teller.open("Smurf")
    for _ in range(3):
        teller.move("deposit", smurf, "9500.00", channel="cash")

    expected["velocity"] = busy = teller.open("Busy")
    for _ in range(6):
        teller.move("deposit", busy, "1.00")

    funder, mule = teller.open("Funder"), teller.open("Mule")
    teller.move("deposit", funder, "3000.00")  # each under the pass-through minimum
    teller.move("deposit", funder, "3000.00")
    teller.transfer(funder, mule, "6000.00")
    teller.move("withdrawal", mule, "5000.00")  # 83% of the incoming leaves at once
    expected["pass_through"] = mule

    expected["new_account_outflow"] = fresh = teller.open("Fresh")
    for _ in range(3):
        teller.move("deposit", fresh, "4000.00")
    teller.move("withdrawal", fresh, "10000.00")

    listed, payer = teller.open("Listed"), teller.open("Payer")
    reply = http.post(
        f"{system.command.url}/v1/watchlist",
        json={"account_id": listed, "reason": "sanctions screening hit"},
        headers=system.headers("compliance"),
    )
    assert reply.status_code == 201, reply.text
    teller.move("deposit", payer, "100.00")
    teller.transfer(payer, listed, "50.00")
    expected["watchlist"] = payer

    expected["dormant_reactivation"] = sleeper = teller.open("Sleeper")
    teller.move("deposit", sleeper, "10.00")
    time.sleep(5)  # past the test configuration's 4 s of idleness
    teller.move("deposit", sleeper, "5000.00")
    return expected


def alerts(system: System, http: httpx.Client) -> list[dict[str, Any]]:
    reply = http.get(
        f"{system.query.url}/v1/alerts", params={"limit": 500},
        headers=system.headers("compliance"),
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    return list(reply.json()["items"])


def caught_up(system: System, http: httpx.Client) -> bool:
    state = http.get(f"{system.query.url}/v1/projections", headers=system.headers("admin")).json()
    return all(item["position"] == state["head"] for item in state["items"])


def topic_alert_ids(system: System, count: int) -> set[str]:
    async def consume() -> set[str]:
        consumer = AIOKafkaConsumer(
            alerts_topic(system.settings),
            bootstrap_servers=system.settings.resolved_kafka_bootstrap(),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        seen: set[str] = set()
        try:
            deadline = time.monotonic() + WAIT_S
            while len(seen) < count and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    seen.update(orjson.loads(r.value)["alert_id"] for r in records)
        finally:
            await consumer.stop()
        return seen

    return asyncio.run(consume())


@pytest.fixture(scope="module")
def scenario(system: System) -> tuple[dict[str, str], list[dict[str, Any]]]:
    with httpx.Client(timeout=30) as http:
        expected = run_scenarios(system, http)
        found = eventually(
            lambda: (a if len(a := alerts(system, http)) >= len(expected)
                     and caught_up(system, http) else None),
            WAIT_S, "the expected alerts", system,
        )  # fmt: skip
    return expected, found


def test_each_scripted_pattern_raises_exactly_its_alert_and_nothing_else(
    scenario: tuple[dict[str, str], list[dict[str, Any]]],
) -> None:
    expected, found = scenario
    assert sorted((a["rule"], a["account_id"]) for a in found) == sorted(expected.items())
    severities = {a["rule"]: a["severity"] for a in found}
    assert severities == {
        "large_transaction": "high",
        "structuring": "high",
        "velocity": "medium",
        "pass_through": "high",
        "new_account_outflow": "medium",
        "dormant_reactivation": "medium",
        "watchlist": "critical",
    }
    structuring = next(a for a in found if a["rule"] == "structuring")
    assert structuring["explanation"] == (
        "3 cash deposits totalling 28,500.00 GBP within 1min, each under 10,000.00"
    )
    assert len(structuring["transaction_ids"]) == 3


def test_every_alert_is_on_the_alerts_topic_once_and_opens_a_case(
    system: System, scenario: tuple[dict[str, str], list[dict[str, Any]]]
) -> None:
    _, found = scenario
    ids = {a["alert_id"] for a in found}
    assert topic_alert_ids(system, len(ids)) == ids
    with httpx.Client(timeout=30) as http:

        def cases() -> set[str] | None:
            reply = http.get(
                f"{system.query.url}/v1/cases", params={"limit": 500},
                headers=system.headers("compliance"),
            )  # fmt: skip
            opened = {c["alert_id"] for c in reply.json()["items"]}
            return opened if opened >= ids else None

        assert eventually(cases, WAIT_S, "a case per alert", system) == ids


def test_every_alerts_evidence_re_runs_to_the_same_verdict(
    system: System, scenario: tuple[dict[str, str], list[dict[str, Any]]]
) -> None:
    _, found = scenario
    with httpx.Client(timeout=30) as http:
        for alert in found:
            reply = http.get(
                f"{system.query.url}/v1/alerts/{alert['alert_id']}/evidence",
                headers=system.headers("auditor"),
            )
            assert reply.status_code == 200, reply.text
            evidence = reply.json()
            assert evidence["verdict"]["reproduced"], (alert["rule"], evidence["verdict"])
            assert evidence["chain_head_matches"]
            assert [e["notification_id"] for e in evidence["evidence"]] == alert["positions"]


def test_rebuilding_the_alerts_read_model_from_zero_gives_the_same_alerts(
    system: System, scenario: tuple[dict[str, str], list[dict[str, Any]]]
) -> None:
    _, before = scenario
    for name in ("workers", "relay"):
        process = system.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    with psycopg.connect(system.settings.resolved_database_url(), autocommit=True) as conn:
        # Republish the whole store: the other projections skip what they have.
        conn.execute(
            "UPDATE relay_state SET position = 0 WHERE topic = %s",
            (ledger_events_topic(system.settings),),
        )
        conn.execute(
            "TRUNCATE readmodel.alerts, readmodel.rule_windows, readmodel.rule_window_movements"
        )
        conn.execute("DELETE FROM readmodel.projection_tracking WHERE projection = 'alerts'")
        conn.execute(
            "UPDATE readmodel.projection_positions SET position = 0 WHERE projection = 'alerts'"
        )
    system.start("relay")
    system.start("workers")
    with httpx.Client(timeout=30) as http:
        eventually(
            lambda: True if caught_up(system, http) and len(alerts(system, http)) >= len(before)
            else None,
            WAIT_S, "the rebuilt alerts", system,
        )  # fmt: skip
        after = alerts(system, http)

    def key(alert: dict[str, Any]) -> tuple[Any, ...]:
        return (alert["alert_id"], alert["rule"], alert["positions"], alert["explanation"])

    assert sorted(map(key, after)) == sorted(map(key, before))
