"""The monitoring rules: pure functions of an account's window and one movement.

Time is the event's time, never the wall clock, so a replay raises the same alerts.
Bounds follow the API contract: "at or above" is inclusive; structuring's "just under" is
from 90% (inclusive) to 100% (exclusive); "more than" is strict. A movement already in
an alert's evidence never counts toward a second alert of the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from domain.money import format_amount
from domain.rules.config import SEVERITIES, RulesConfig
from domain.rules.tallies import TALLIED, Tallies
from domain.rules.window import CREDIT, DEBIT, AccountWindow, Movement


@dataclass(frozen=True, slots=True)
class Hit:
    rule: str
    severity: str
    account_id: str
    evidence: tuple[Movement, ...]
    explanation: str
    raised_at: datetime
    notification_id: int  # of the movement that completed the pattern
    # Screening's alerts: named after their hold (not the event), about a command that
    # has not posted (no movement is their evidence: the hold event is).
    alert_id: str | None = None
    held_transaction_id: str | None = None

    @property
    def notification_ids(self) -> list[int]:
        if not self.evidence:
            return [self.notification_id]
        return [m.notification_id for m in self.evidence]

    @property
    def transaction_ids(self) -> list[str]:
        if self.held_transaction_id is not None:
            return [self.held_transaction_id]
        return [m.transaction_id for m in self.evidence if m.transaction_id]


@dataclass(frozen=True, slots=True)
class Context:
    config: RulesConfig
    window: AccountWindow  # already holding the new movement
    movement: Movement
    counterparty_watchlisted: bool
    previous_activity_at: datetime | None  # the last movement before this one, or opening
    # The window's running totals; None: the rules read the window itself.
    tallies: Tallies | None = None

    def since(self, seconds: int) -> datetime:
        return self.movement.at - timedelta(seconds=seconds)

    def within(self, seconds: int, rule: str) -> list[Movement]:
        """Movements of the last `seconds` (the new one included) not yet used by `rule`."""
        return self.window.unused_since(rule, self.since(seconds))

    def money(self, minor: int) -> str:
        return grouped(minor, self.movement.currency)

    def threshold(self, major: int) -> int:
        return self.config.minor(major, self.movement.currency)


Found = tuple[list[Movement], str] | None


def opened(window: AccountWindow, at: datetime, branch: str, version: int) -> AccountWindow:
    return window.but(opened_at=at, branch=branch, version=version)


def evaluate(
    config: RulesConfig,
    window: AccountWindow,
    movement: Movement,
    version: int,
    *,
    counterparty_watchlisted: bool = False,
    tally: bool = True,
) -> tuple[list[Hit], AccountWindow]:
    """Score one movement; return the alerts it completes and the window after it.
    `tally=False` has every rule read the whole window (the reference the running totals
    are tested against)."""
    assert version > window.version, "an account's events are scored in order"
    before = window.last_movement_at or window.opened_at
    hits: list[Hit] = []
    tallies = Tallies.of(config, window) if tally else None
    if tallies is not None and not tallies.add(movement):
        tallies = None
    # One context for all rules: its window holds `used` itself, so each rule sees the
    # evidence the rules before it took.
    used = dict(window.used)
    with_movement = window.with_movement(movement, used, tallies)
    context = Context(config, with_movement, movement, counterparty_watchlisted, before, tallies)
    for rule, check in RULE_CHECKS:
        found = check(context)
        if found is None:
            continue
        evidence, explanation = found
        assert movement in evidence, "an alert is raised by the movement that completes it"
        hits.append(
            Hit(
                rule=rule,
                severity=SEVERITIES[rule],
                account_id=window.account_id,
                evidence=tuple(sorted(evidence, key=lambda m: m.notification_id)),
                explanation=explanation,
                raised_at=movement.at,
                notification_id=movement.notification_id,
            )
        )
        used[rule] = used.get(rule, frozenset()) | {m.notification_id for m in evidence}
    after = with_movement.but(last_movement_at=movement.at, version=version).pruned(
        movement.at, config.keep_s, config.new_account_window_s
    )
    if tallies is not None:
        tallies.settle((hit.rule for hit in hits if hit.rule in TALLIED), with_movement, after)
    return hits, after


def _large_transaction(c: Context) -> Found:
    limit = c.threshold(c.config.large_transaction)
    if c.movement.amount_minor < limit:
        return None
    return [c.movement], (
        f"{_kind(c.movement)} of {c.money(c.movement.amount_minor)} "
        f"{c.movement.currency}, at or above {c.money(limit)}"
    )


def _structuring(c: Context) -> Found:
    threshold = c.threshold(c.config.reporting_threshold)
    lower = c.config.structuring_lower(c.movement.currency)

    def just_under(m: Movement) -> bool:
        is_cash_deposit = m.kind == "deposit" and m.channel == "cash"
        return is_cash_deposit and lower <= m.amount_minor < threshold

    if not just_under(c.movement):
        return None
    deposits = [m for m in c.within(c.config.structuring_window_s, "structuring") if just_under(m)]
    total = sum(m.amount_minor for m in deposits)
    if len(deposits) < c.config.structuring_count_min or total < threshold:
        return None
    return deposits, (
        f"{len(deposits)} cash deposits totalling {c.money(total)} {c.movement.currency} "
        f"within {_duration(c.config.structuring_window_s)}, each under {c.money(threshold)}"
    )


def _velocity(c: Context) -> Found:
    tallies = c.tallies
    window_s = c.config.velocity_count_window_s
    if tallies is None or (
        tallies.recent_count(c.window, c.since(window_s)) > c.config.velocity_count_max
    ):
        recent = c.within(window_s, "velocity")
        if len(recent) > c.config.velocity_count_max:
            return recent, (
                f"{len(recent)} movements within {_duration(window_s)}, "
                f"more than {c.config.velocity_count_max}"
            )
    if c.movement.direction != DEBIT:
        return None
    limit = c.threshold(c.config.velocity_outflow_max)
    since = c.since(c.config.velocity_outflow_window_s)
    if tallies is not None and tallies.outflow_total(c.window, since) <= limit:
        return None
    outflows = [
        m for m in c.within(c.config.velocity_outflow_window_s, "velocity") if m.direction == DEBIT
    ]
    total = sum(m.amount_minor for m in outflows)
    if total <= limit:
        return None
    return outflows, (
        f"{c.money(total)} {c.movement.currency} out within "
        f"{_duration(c.config.velocity_outflow_window_s)}, more than {c.money(limit)}"
    )


def _pass_through(c: Context) -> Found:
    if c.movement.direction != DEBIT:
        return None
    if c.tallies is not None and not c.tallies.incoming_count(
        c.window, c.since(c.config.pass_through_window_s)
    ):
        return None
    window = timedelta(seconds=c.config.pass_through_window_s)
    minimum = c.threshold(c.config.pass_through_incoming_min)
    unused = c.window.unused("pass_through")
    for incoming in unused:
        if incoming.direction != CREDIT or incoming.amount_minor < minimum:
            continue
        if c.movement.at - incoming.at >= window:
            continue
        outflows = [
            m
            for m in unused
            if m.direction == DEBIT
            and incoming.at <= m.at < incoming.at + window
            and m.notification_id > incoming.notification_id
        ]
        total = sum(m.amount_minor for m in outflows)
        if total * c.config.pass_through_fraction.denominator >= (
            incoming.amount_minor * c.config.pass_through_fraction.numerator
        ):
            return [incoming, *outflows], (
                f"{c.money(total)} of an incoming {c.money(incoming.amount_minor)} "
                f"{c.movement.currency} left within {_duration(c.config.pass_through_window_s)}"
            )
    return None


def _new_account_outflow(c: Context) -> Found:
    opened_at = c.window.opened_at
    if c.movement.direction != DEBIT or opened_at is None:
        return None
    young_until = opened_at + timedelta(seconds=c.config.new_account_window_s)
    if c.movement.at > young_until:
        return None
    limit = c.threshold(c.config.new_account_outflow_min)
    if c.tallies is not None and c.tallies.young_outflow_total(c.window) < limit:
        return None
    outflows = [
        m
        for m in c.window.unused("new_account_outflow")
        if m.direction == DEBIT and opened_at <= m.at <= young_until
    ]
    total = sum(m.amount_minor for m in outflows)
    if total < limit:
        return None
    return outflows, (
        f"{c.money(total)} {c.movement.currency} out within "
        f"{_duration(c.config.new_account_window_s)} of opening, at or above {c.money(limit)}"
    )


def _dormant(c: Context) -> Found:
    limit = c.threshold(c.config.dormant_amount_min)
    if c.previous_activity_at is None or c.movement.amount_minor < limit:
        return None
    idle = c.movement.at - c.previous_activity_at
    if idle < timedelta(seconds=c.config.dormant_idle_s):
        return None
    return [c.movement], (
        f"{_kind(c.movement)} of {c.money(c.movement.amount_minor)} {c.movement.currency} "
        f"after {idle.days} days without activity"
    )


def _watchlist(c: Context) -> Found:
    if not (c.movement.is_transfer and c.counterparty_watchlisted):
        return None
    way = "to" if c.movement.kind == "transfer_out" else "from"
    return [c.movement], (
        f"transfer of {c.money(c.movement.amount_minor)} {c.movement.currency} {way} "
        f"watchlisted account {c.movement.counterparty_account_id}"
    )


RULE_CHECKS: Sequence[tuple[str, Callable[[Context], Found]]] = (
    ("large_transaction", _large_transaction),
    ("structuring", _structuring),
    ("velocity", _velocity),
    ("pass_through", _pass_through),
    ("new_account_outflow", _new_account_outflow),
    ("dormant_reactivation", _dormant),
    ("watchlist", _watchlist),
)


def grouped(minor: int, currency: str) -> str:
    """`28,500.00`: amounts in explanations, with thousands separators."""
    text = format_amount(minor, currency)
    sign = "-" if text.startswith("-") else ""
    units, _, fraction = text.lstrip("-").partition(".")
    units = f"{int(units):,}"
    return sign + units + (f".{fraction}" if fraction else "")


def _duration(seconds: int) -> str:
    for unit_s, name in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds % unit_s == 0:
            return f"{seconds // unit_s}{name}"
    return f"{seconds}s"


def _kind(movement: Movement) -> str:
    return {
        "deposit": "deposit",
        "withdrawal": "withdrawal",
        "transfer_in": "incoming transfer",
        "transfer_out": "outgoing transfer",
    }[movement.kind]
