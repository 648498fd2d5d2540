"""`vigil rules backtest`: a candidate rule configuration against the real event history.

Walks the whole event store in notification order, scoring every account event with the
live configuration and with the candidate side by side (each with windows of its own),
and the watchlist as it was at each event (its changes are in the same walk, so "as of
this notification id" is exact). The candidate's alerts go to a shadow table,
`readmodel.alerts_shadow`; the report shows what one raised that the other did not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from application.ledger import Ledger
from domain.ids import alert_id, watchlist_entry_id
from domain.money import Money
from domain.rules.config import RulesConfig
from domain.rules.engine import Hit, grouped
from domain.rules.window import AccountWindow
from domain.screening import Screening, screen
from infrastructure.eventstore.envelopes import envelope_pages
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.alerts import LISTED_EVENTS
from infrastructure.monitoring.rules_config import load_rules
from infrastructure.postgres.connect import connect
from infrastructure.readmodels.schema import SCHEMA
from infrastructure.settings import Settings
from projections.alerts import movement_of, step
from projections.envelope import Envelope

PAGE_EVENTS = 2_000
PROGRESS_EVERY_S = 2.0
# Where the candidate's alerts go, for people to look at.
SHADOW_TABLE = f"{SCHEMA}.alerts_shadow"

SHADOW_DDL = f"""
CREATE TABLE IF NOT EXISTS {SHADOW_TABLE} (
    alert_id uuid PRIMARY KEY,
    rule text NOT NULL,
    account_id uuid NOT NULL,
    notification_id bigint NOT NULL,
    positions jsonb NOT NULL,
    explanation text NOT NULL,
    raised_at timestamptz NOT NULL
)
"""

Key = tuple[str, str, int]  # rule, account, notification id of the completing event
# The debits screening judges when their command comes (a hold's capture is not judged
# again: its placing was).
SCREENED_DEBITS = ("TransferredOut", "Withdrawn")


@dataclass
class ScreeningTally:
    """What a `[screening]` section would have held for review: how many commands, and
    their total per currency (minor units), by rule."""

    held: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    totals_minor: dict[str, int] = field(default_factory=dict)

    def count(self, rule: str, money: Money) -> None:
        self.held += 1
        self.by_rule[rule] = self.by_rule.get(rule, 0) + 1
        self.totals_minor[money.currency] = (
            self.totals_minor.get(money.currency, 0) + money.amount_minor
        )

    def describe(self) -> str:
        if not self.held:
            return "none"
        rules = ", ".join(f"{rule} {n}" for rule, n in sorted(self.by_rule.items()))
        totals = ", ".join(
            f"{grouped(minor, currency)} {currency}"
            for currency, minor in sorted(self.totals_minor.items())
        )
        return f"{self.held} ({rules}), totalling {totals}"


@dataclass
class Side:
    """One configuration's walk: its windows, what it raised, and what its screening
    would have held."""

    config: RulesConfig
    windows: dict[UUID, AccountWindow] = field(default_factory=dict)
    hits: dict[Key, Hit] = field(default_factory=dict)
    screened: ScreeningTally = field(default_factory=ScreeningTally)

    def screen(self, event: Envelope, listed_accounts: set[UUID]) -> None:
        """A command's debit as screening would judge it when it came."""
        payload = event.payload
        payee = payload.get("to_account_id") or payload.get("counterparty_account_id")
        money = Money(payload["amount_minor"], payload["currency"])
        verdict = screen(
            Screening(self.config, "", 0),
            money,
            event.aggregate_id,
            None if payee is None else UUID(payee),
            listed_accounts,
        )
        if verdict is not None:
            self.screened.count(verdict.rule, money)

    def score(self, event: Envelope, watchlisted: bool, keep: Callable[[Hit], bool]) -> None:
        window = self.windows.get(event.aggregate_id) or AccountWindow(str(event.aggregate_id))
        hits, self.windows[event.aggregate_id] = step(self.config, window, event, watchlisted)
        for hit in hits:
            if keep(hit):
                self.hits[(hit.rule, hit.account_id, hit.notification_id)] = hit


@dataclass(frozen=True)
class BacktestProgress:
    """How far the walk is, every few seconds: the last notification id scored."""

    scored_up_to: int
    head: int  # the store's last notification id when the walk began
    events: int  # events read so far
    elapsed_s: float


@dataclass
class Report:
    events: int
    seconds: float
    live: dict[Key, Hit]
    candidate: dict[Key, Hit]
    live_screened: ScreeningTally = field(default_factory=ScreeningTally)
    candidate_screened: ScreeningTally = field(default_factory=ScreeningTally)

    @property
    def only_candidate(self) -> list[Hit]:
        return [h for k, h in sorted(self.candidate.items()) if k not in self.live]

    @property
    def only_live(self) -> list[Hit]:
        return [h for k, h in sorted(self.live.items()) if k not in self.candidate]


def run_backtest(
    settings: Settings,
    candidate_path: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Callable[[BacktestProgress], None] | None = None,
) -> Report:
    """Walk the store with the live configuration and the candidate at `candidate_path`;
    the candidate's alerts are written to SHADOW_TABLE."""
    live_config, _ = load_rules(settings.rules_config)
    candidate_config, _ = load_rules(candidate_path)
    ledger = open_ledger(settings)
    try:
        report = walk(ledger, live_config, candidate_config, since, until, progress)
    finally:
        ledger.close()
    write_shadow(settings, report.candidate.values())
    return report


def walk(
    ledger: Ledger,
    live_config: RulesConfig,
    candidate_config: RulesConfig,
    since: datetime | None,
    until: datetime | None,
    progress: Callable[[BacktestProgress], None] | None,
) -> Report:
    live, candidate = Side(live_config), Side(candidate_config)
    listed: set[UUID] = set()  # watchlist entries listed so far, in store order
    listed_accounts: set[UUID] = set()  # the accounts they name
    captures: set[str | None] = set()  # transaction ids of hold captures

    def keep(hit: Hit) -> bool:
        return (since is None or hit.raised_at >= since) and (
            until is None or hit.raised_at < until
        )

    def keep_event(event: Envelope) -> bool:
        return (since is None or event.timestamp >= since) and (
            until is None or event.timestamp < until
        )

    head = ledger.recorder.max_notification_id() or 0
    started = last_said = time.monotonic()
    count = 0
    for event in (e for page in envelope_pages(ledger, PAGE_EVENTS) for e in page):
        count += 1
        if event.aggregate_type == "watchlist":
            account_id = UUID(event.payload["account_id"])
            if event.event_type in LISTED_EVENTS:
                listed.add(event.aggregate_id)
                listed_accounts.add(account_id)
            else:
                listed.discard(event.aggregate_id)
                listed_accounts.discard(account_id)
            continue
        if not event.is_account_event:
            continue  # cases: nothing for the rules
        if event.event_type == "HoldCaptured":
            captures.add(event.transaction_id)
        if keep_event(event) and (
            event.event_type == "HoldPlaced"
            or (event.event_type in SCREENED_DEBITS and event.transaction_id not in captures)
        ):
            live.screen(event, listed_accounts)
            candidate.screen(event, listed_accounts)
        movement = movement_of(event)
        counterparty = movement.counterparty_account_id if movement else None
        watchlisted = counterparty is not None and watchlist_entry_id(counterparty) in listed
        live.score(event, watchlisted, keep)
        candidate.score(event, watchlisted, keep)
        if progress is not None and time.monotonic() - last_said >= PROGRESS_EVERY_S:
            last_said = time.monotonic()
            progress(BacktestProgress(event.notification_id, head, count, last_said - started))
    seconds = time.monotonic() - started
    return Report(count, seconds, live.hits, candidate.hits, live.screened, candidate.screened)


def write_shadow(settings: Settings, hits: Any) -> None:
    with connect(settings, "backtest", autocommit=True) as conn:
        conn.execute(SHADOW_DDL)
        with conn.transaction():
            conn.execute(f"TRUNCATE {SHADOW_TABLE}")
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {SHADOW_TABLE} (alert_id, rule, account_id, "
                    "notification_id, positions, explanation, raised_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            alert_id(h.rule, h.account_id, h.notification_id),
                            h.rule, h.account_id, h.notification_id,
                            Jsonb(h.notification_ids), h.explanation, h.raised_at,
                        )
                        for h in hits
                    ],
                )  # fmt: skip
