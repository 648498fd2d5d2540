"""The bank's invariants, checked against the stores themselves after each fault:

- every acknowledged command is in the event store exactly once (each event it should leave,
  once) with the reply the client got; no refused command left anything; a command whose
  outcome the client never learnt left all of its events or none;
- money is conserved per currency: the accounts' balances (each account's last
  `balance_after_minor` in the store) sum to the deposits minus the withdrawals, captures as
  card withdrawals included; the read model's balance and version of every account equal
  the store's;
- every alert is in the read models once and has exactly one case (opened for it, joined to
  an open one, or suppressed);
- with `full`: a fresh replay into a shadow schema equals the read models
  (`vigil replay --to-shadow`, then `--diff`), and `vigil audit verify` is clean.

The store is read through the ledger's own recorder and decoder, incrementally: each check
decodes only the events since the last. An account's state is taken from its highest
version, whatever order the notification ids gave; an event older than one already read
is reported (`out_of_order_events`): the recorder's table lock should make that never
happen, and the runs show it. Used by faults.py, a sibling module.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_workload import EXPECTED_EVENTS, Record

from application.ledger import Ledger
from infrastructure.eventstore.envelopes import stored_envelope
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.readmodels.schema import SCHEMA
from infrastructure.settings import Settings

PAGE = 2_000
# A soak's store (a million events and more) takes the replay tens of minutes here.
TOOL_TIMEOUT_S = 3_600.0
ALERT_HOMES = f"""
SELECT a.alert_id::text,
       (SELECT count(*) FROM {SCHEMA}.cases c WHERE c.alert_id = a.alert_id)
     + (SELECT count(*) FROM {SCHEMA}.case_history h
         WHERE h.event_type = 'CaseAlertJoined' AND h.details->>'alert_id' = a.alert_id::text)
     + (SELECT count(*) FROM {SCHEMA}.suppressed_alerts s WHERE s.alert_id = a.alert_id)
FROM {SCHEMA}.alerts a
"""


@dataclass
class StoreState:
    """What the events read so far say: balances, external flows, events per transaction."""

    position: int = 0
    balances: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (currency, minor)
    versions: dict[str, int] = field(default_factory=dict)
    balance_versions: dict[str, int] = field(default_factory=dict)  # of the balance above
    out_of_order: list[str] = field(default_factory=list)  # events older than one read
    flows: Counter[str] = field(default_factory=Counter)  # currency -> deposits - withdrawals
    by_transaction: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )

    def apply(self, body: Mapping[str, Any]) -> None:
        if body["aggregate_type"] != "account":
            return
        account_id, event_type = str(body["aggregate_id"]), str(body["event_type"])
        payload = body["payload"]
        version = int(body["version"])
        # By version, not by arrival: an account's state is its highest version's, whatever
        # order the notification ids gave (an older version after a newer one is noted).
        if version < self.versions.get(account_id, 0):
            self.out_of_order.append(f"{account_id} v{version} after v{self.versions[account_id]}")
        self.versions[account_id] = max(version, self.versions.get(account_id, 0))
        if event_type == "AccountOpened":
            self.balances.setdefault(account_id, (str(payload["currency"]), 0))
        if "balance_after_minor" in payload and version > self.balance_versions.get(account_id, 0):
            currency = self.balances[account_id][0]
            self.balances[account_id] = (currency, int(payload["balance_after_minor"]))
            self.balance_versions[account_id] = version
        if event_type == "Deposited":
            self.flows[str(payload["currency"])] += int(payload["amount_minor"])
        elif event_type == "Withdrawn":
            self.flows[str(payload["currency"])] -= int(payload["amount_minor"])
        if body.get("transaction_id"):
            self.by_transaction[str(body["transaction_id"])][event_type] += 1


@dataclass
class Checker:
    settings: Settings  # pointing at the database directly, not through any proxy
    env: dict[str, str]  # for the `vigil` tools: the system's, with that database URL
    state: StoreState = field(default_factory=StoreState)
    _ledger: Ledger | None = None

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def read_store(self) -> None:
        if self._ledger is None:
            self._ledger = open_ledger(self.settings)
        recorder = self._ledger.recorder
        while True:
            page = recorder.select_notifications(
                self.state.position, PAGE, inclusive_of_start=False
            )
            for notification in page:
                self.state.apply(stored_envelope(self._ledger, notification.id, notification))
                self.state.position = notification.id
            if len(page) < PAGE:
                return

    def check(self, records: Sequence[Record], *, full: bool) -> list[str]:
        """Every violation found, as a sentence; none means every invariant holds. The
        workload must be quiet and the projections caught up."""
        try:
            self.read_store()
        except Exception:  # a pool whose connections died with the server: a new one
            self.close()
            self.read_store()
        problems = self._commands(records)
        problems += self._money()
        with psycopg.connect(self.settings.database_url, connect_timeout=10) as conn:
            problems += self._read_models(conn)
            problems += self._alerts(conn)
        if full:
            problems += self._replay_equal()
            problems += self._audit_clean()
        return problems

    def _commands(self, records: Sequence[Record]) -> list[str]:
        problems: list[str] = []
        done = [r for r in records if r.done]
        singles = {r.transaction_id: r for r in done if r.single and r.acknowledged}
        replies = self._replies(list(singles))
        for record in done:
            found = self.state.by_transaction.get(record.transaction_id, Counter())
            expected = EXPECTED_EVENTS[record.kind]
            if record.kind == "open" or record.status == 202:
                continue  # an account's id; a transfer held for review (not in this mix)
            if record.acknowledged:
                if found != expected:
                    problems.append(f"{_name(record)} acknowledged, stored {dict(found)}")
            elif record.refused:
                if found:
                    problems.append(f"{_name(record)} refused ({record.status}), stored {found}")
                if record.transaction_id in replies:
                    problems.append(f"{_name(record)} refused, its reply stored")
            elif found and found != expected:
                problems.append(f"{_name(record)} outcome unknown, stored {dict(found)}")
        for transaction_id, record in singles.items():
            stored = replies.get(transaction_id)
            if stored is None:
                problems.append(f"{_name(record)} acknowledged, no stored reply")
            elif stored != record.reply:
                problems.append(f"{_name(record)}: the stored reply differs from the client's")
        return problems

    def _replies(self, command_ids: list[str]) -> dict[str, Any]:
        if not command_ids:
            return {}
        with psycopg.connect(self.settings.database_url, connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT command_id::text, body FROM public.command_replies"
                " WHERE command_id = ANY(%s::uuid[])",
                (command_ids,),
            ).fetchall()
        return {command_id: orjson.loads(body) for command_id, body in rows}

    def _money(self) -> list[str]:
        held: Counter[str] = Counter()
        for currency, balance in self.state.balances.values():
            held[currency] += balance
        problems = []
        for currency in sorted(set(held) | set(self.state.flows)):
            if held[currency] != self.state.flows[currency]:
                problems.append(
                    f"{currency}: balances sum to {held[currency]}, deposits minus withdrawals"
                    f" to {self.state.flows[currency]}"
                )
        return problems

    def _read_models(self, conn: psycopg.Connection[Any]) -> list[str]:
        rows = conn.execute(
            f"SELECT account_id::text, balance_minor, version FROM {SCHEMA}.accounts"
        ).fetchall()
        seen = {account_id: (int(b), int(v)) for account_id, b, v in rows}
        problems = []
        for account_id, (_, balance) in self.state.balances.items():
            want = (balance, self.state.versions[account_id])
            if seen.get(account_id) != want:
                problems.append(
                    f"account {account_id}: read model {seen.get(account_id)}, store {want}"
                )
        return problems[:20]

    def _alerts(self, conn: psycopg.Connection[Any]) -> list[str]:
        problems = []
        for alert_id, homes in conn.execute(ALERT_HOMES).fetchall():
            if int(homes) != 1:
                problems.append(f"alert {alert_id} is in {homes} cases")
        return problems[:20]

    def _replay_equal(self) -> list[str]:
        for args in (("replay", "--to-shadow"), ("replay", "--diff")):
            result = self._vigil(*args)
            if result.returncode != 0:
                return [
                    f"vigil {' '.join(args)} (exit {result.returncode}): {result.stdout[-500:]}"
                ]
        return []

    def _audit_clean(self) -> list[str]:
        result = self._vigil("audit", "verify", "--json")
        if result.returncode != 0:
            return [f"vigil audit verify (exit {result.returncode}): {result.stdout[-800:]}"]
        return []

    def _vigil(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A `vigil` tool; one that outlives TOOL_TIMEOUT_S is a reported failure (exit
        -1), never an exception that ends the run without its verdict."""
        command = [sys.executable, "-m", "interfaces.cli", *args]
        try:
            return subprocess.run(
                command,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(
                command, -1, f"timed out after {TOOL_TIMEOUT_S:.0f} s", ""
            )


def _name(record: Record) -> str:
    return f"{record.kind} {record.transaction_id}"
