"""The audit routes over real HTTP when the store holds events the server cannot decode:
one whose stored state was overwritten, one whose topic names a class that does not exist.
Lists show them where they are (marked `unreadable`), a state or an export that needs them
is a 500 `event_unreadable` naming the event, and nothing is cut short or left behind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import orjson
import psycopg
import pytest

from application.commands import Deposit, OpenAccount
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.settings import Settings
from tests.conftest import ApiServer, Databases, settings_env, start_query_api
from tests.e2e.conftest import assert_problem, bearer, make_token
from tests.integration.support import run

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT_S = 30.0
UNKNOWN_TOPIC = "domain.account:Account.Teleported"


@dataclass
class Store:
    settings: Settings
    server: ApiServer
    client: httpx.Client
    garbled: UUID  # versions 1-2 readable, version 3's state overwritten
    unknown: UUID  # version 1 readable, version 2 of a class that does not exist
    ids: dict[tuple[UUID, int], int]  # (account, version) -> notification id

    def get(self, path: str, **params: Any) -> httpx.Response:
        token = make_token(self.settings, "auditor", subject="auditor-unreadable-e2e")
        return self.client.get(path, params=params or None, headers=bearer(token))

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        token = make_token(self.settings, "auditor", subject="auditor-unreadable-e2e")
        return self.client.post(path, json=body, headers=bearer(token))


def _write(settings: Settings) -> tuple[UUID, UUID]:
    garbled, unknown = uuid4(), uuid4()
    ledger = open_ledger(settings)
    try:
        run(
            ledger,
            OpenAccount(garbled, "Ada", "001", "GBP", 0),
            Deposit(garbled, Money(10_000, "GBP"), uuid4()),
            Deposit(garbled, Money(500, "GBP"), uuid4()),
            OpenAccount(unknown, "Bob", "001", "GBP", 0),
            Deposit(unknown, Money(700, "GBP"), uuid4()),
        )
    finally:
        ledger.close()
    return garbled, unknown


def _spoil(settings: Settings, garbled: UUID, unknown: UUID) -> dict[tuple[UUID, int], int]:
    """As the table's owner could: append-only triggers off, two rows changed, back on."""
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT originator_id, originator_version, notification_id FROM {EVENTS_TABLE}"
        ).fetchall()
        conn.execute(f"ALTER TABLE {EVENTS_TABLE} DISABLE TRIGGER USER")
        try:
            conn.execute(
                f"UPDATE {EVENTS_TABLE} SET state = 'garbage' "
                "WHERE originator_id = %s AND originator_version = 3",
                (garbled,),
            )
            conn.execute(
                f"UPDATE {EVENTS_TABLE} SET topic = %s "
                "WHERE originator_id = %s AND originator_version = 2",
                (UNKNOWN_TOPIC, unknown),
            )
        finally:
            conn.execute(f"ALTER TABLE {EVENTS_TABLE} ENABLE TRIGGER USER")
    return {(UUID(str(o)), int(v)): int(n) for o, v, n in rows}


@pytest.fixture(scope="module")
def store(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    var_dir = tmp_path_factory.mktemp("var-audit-unreadable")
    settings = databases.settings_for(databases.fresh(), var_dir)
    garbled, unknown = _write(settings)
    ids = _spoil(settings, garbled, unknown)
    server = start_query_api(settings, var_dir / "logs")
    try:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
            yield Store(settings, server, client, garbled, unknown, ids)
    finally:
        server.stop()


def _unreadable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if "unreadable" in item]


def test_an_accounts_history_shows_an_unreadable_event_where_it_is(store: Store) -> None:
    reply = store.get(f"/v1/audit/accounts/{store.garbled}/events")
    assert reply.status_code == 200, reply.text
    items = reply.json()["items"]
    assert [item["version"] for item in items] == [1, 2, 3]
    assert _unreadable(items) == [items[2]]
    spoiled = items[2]
    assert spoiled["notification_id"] == store.ids[(store.garbled, 3)]
    assert spoiled["unreadable"]  # why, in words
    assert spoiled["event_type"] == "Deposited"  # as its topic says
    assert spoiled["hash"] is None
    assert spoiled["payload"] is None
    assert items[1]["hash"]
    assert items[1]["payload"]
    assert "unreadable" not in items[1]


def test_an_event_of_a_class_that_does_not_exist_is_shown_not_taken_for_a_missing_account(
    store: Store,
) -> None:
    reply = store.get(f"/v1/audit/accounts/{store.unknown}/events")
    assert reply.status_code == 200, reply.text
    items = reply.json()["items"]
    assert [item["version"] for item in items] == [1, 2]
    assert _unreadable(items) == [items[1]]
    assert items[1]["event_type"] == "Teleported"


def test_the_store_stream_is_whole_json_with_both_events_marked(store: Store) -> None:
    """The stream decodes as it writes: an event that fails to decode used to cut the
    reply short (the client saw a reset connection)."""
    for params in ({}, {"account_id": str(store.garbled)}, {"limit": 2}):
        reply = store.get("/v1/audit/events", **params)
        assert reply.status_code == 200, reply.text
        page = orjson.loads(reply.content)  # the whole document, or this raises
        assert set(page) == {"items", "next_cursor", "index"}
    everything = store.get("/v1/audit/events").json()["items"]
    assert len(everything) == len(store.ids)
    marked = {(item["aggregate_id"], item["version"]) for item in _unreadable(everything)}
    assert marked == {(str(store.garbled), 3), (str(store.unknown), 2)}
    for item in _unreadable(everything):
        assert item["aggregate_type"] == "account"
        assert item["account_id"] == item["aggregate_id"]
        assert item["timestamp"] is None
        assert item["mac"] is None


def test_a_state_before_the_unreadable_event_is_rebuilt_and_one_that_needs_it_is_refused(
    store: Store,
) -> None:
    before = store.get(f"/v1/audit/accounts/{store.garbled}/state", version=2)
    assert before.status_code == 200, before.text
    assert before.json()["balance"] == "100.00"
    for params in ({"version": 3}, {"as_of": "2999-01-01T00:00:00Z"}):
        reply = store.get(f"/v1/audit/accounts/{store.garbled}/state", **params)
        assert_problem(reply, 500, "event_unreadable")
        assert "version 3" in reply.json()["detail"]


def test_an_export_that_would_hold_an_unreadable_event_fails_and_leaves_nothing(
    store: Store,
) -> None:
    body = {"from": "2000-01-01T00:00:00Z", "to": "2999-01-01T00:00:00Z", "format": "jsonl"}
    reply = store.post("/v1/audit/exports", body)
    assert_problem(reply, 500, "event_unreadable")
    assert str(store.ids[(store.garbled, 3)]) in reply.json()["detail"]
    assert store.get("/v1/audit/exports").json()["items"] == []
    exports = store.settings.var_dir / "exports"
    assert not exports.exists() or list(exports.iterdir()) == []
    # One account's events that are all readable still export.
    readable = store.post("/v1/audit/exports", {**body, "account_id": str(store.unknown)})
    assert readable.status_code == 500  # its version 2 is of no known class
    fine = uuid4()
    _open(store.settings, fine)
    assert store.post("/v1/audit/exports", {**body, "account_id": str(fine)}).status_code == 201


def test_the_cli_export_says_which_event_and_exits_1(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "trail"
    argv = ["audit", "export", "--from", "2000-01-01T00:00:00Z", "--to", "2999-01-01T00:00:00Z"]
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        env=settings_env(store.settings),
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"notification id {store.ids[(store.garbled, 3)]}" in done.stderr
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".trail")] == []


def test_verify_names_both_events(store: Store) -> None:
    reply = store.get("/v1/audit/verify")
    assert reply.status_code == 200, reply.text
    text = reply.text
    for key in ((store.garbled, 3), (store.unknown, 2)):
        assert str(store.ids[key]) in text


def _open(settings: Settings, account_id: UUID) -> None:
    ledger = open_ledger(settings)
    try:
        run(ledger, OpenAccount(account_id, "Cy", "001", "GBP", 0))
    finally:
        ledger.close()


def test_reindex_stops_at_an_unreadable_event_and_says_which(
    databases: Databases, tmp_path: Path
) -> None:
    """Its index row gone (as an event written behind the application's back has none),
    the spoiled event is one `vigil audit reindex` must decode: exit 1, one line."""
    settings = databases.settings_for(databases.fresh(), tmp_path)
    garbled, unknown = _write(settings)
    ids = _spoil(settings, garbled, unknown)
    spoiled = ids[(garbled, 3)]
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute("ALTER TABLE public.event_index DISABLE TRIGGER USER")
        try:
            conn.execute("DELETE FROM public.event_index WHERE notification_id = %s", (spoiled,))
        finally:
            conn.execute("ALTER TABLE public.event_index ENABLE TRIGGER USER")
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "audit", "reindex"],
        capture_output=True,
        text=True,
        env=settings_env(settings),
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"reindex stopped: the stored event at notification id {spoiled}" in done.stderr
