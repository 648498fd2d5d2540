"""What the rules remember of one account: its recent movements and which of them are
already the evidence of an alert, per rule. Kept by the alerts projection in PostgreSQL
(as JSON) so a restart or a replay gives the same alerts."""

from __future__ import annotations

import itertools
import operator
from bisect import bisect_right
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

CREDIT = "credit"
DEBIT = "debit"
_AT = operator.attrgetter("at")
# The most movements one account's window keeps, the newest. Every rule fires on far fewer
# (velocity on more than 20 in an hour), so an account past the cap has been alerted on
# already; without it, a new account moving thousands of times in its first week (whose
# window keeps the whole week for the new-account rule) made every later event, and the
# worker's memory, grow with all of them. Replays and evidence re-runs cap the same way.
WINDOW_MOVEMENTS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Movement:
    notification_id: int
    transaction_id: str | None
    at: datetime
    kind: str  # deposit, withdrawal, transfer_in, transfer_out
    direction: str  # credit or debit
    amount_minor: int
    currency: str
    channel: str | None
    counterparty_account_id: str | None

    @property
    def is_transfer(self) -> bool:
        return self.kind in ("transfer_in", "transfer_out")

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.notification_id,
            "t": self.transaction_id,
            "at": self.at.isoformat(),
            "k": self.kind,
            "d": self.direction,
            "a": self.amount_minor,
            "c": self.currency,
            "ch": self.channel,
            "cp": self.counterparty_account_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Movement:
        return cls(
            notification_id=data["n"],
            transaction_id=data["t"],
            at=datetime.fromisoformat(data["at"]),
            kind=data["k"],
            direction=data["d"],
            amount_minor=data["a"],
            currency=data["c"],
            channel=data["ch"],
            counterparty_account_id=data["cp"],
        )


@dataclass(frozen=True)
class AccountWindow:
    account_id: str
    version: int = 0
    opened_at: datetime | None = None
    branch: str | None = None
    last_movement_at: datetime | None = None
    movements: tuple[Movement, ...] = ()
    used: dict[str, frozenset[int]] = field(default_factory=dict)
    # The rules' running totals of this window (`domain.rules.tallies`): derived, held in
    # memory only, never compared or stored.
    tallies: object = field(default=None, compare=False, repr=False)
    # Whether the movements are in time order, as they almost always are (a movement is
    # out of order only when its event's time is earlier than the one before it): then
    # pruning finds what leaves by bisection, where it otherwise passes over the whole
    # window at every event. Derived, never compared or stored: the answer beside the
    # movements it is about, so a window made with other movements asks again.
    order: tuple[tuple[Movement, ...], bool] | None = field(default=None, compare=False, repr=False)

    # A busy account's window holds tens of thousands of movements (a week of a new
    # account's), each looked at several times per event: one pass where two would do,
    # and pruning that returns the window as it is when nothing can go.

    def but(self, **changes: object) -> AccountWindow:
        """This window with `changes`, as `dataclasses.replace` gives it, without its
        generic pass over the fields and frozen setters: two copies per scored event."""
        assert changes.keys() <= _WINDOW_FIELDS, sorted(changes.keys() - _WINDOW_FIELDS)
        copy = object.__new__(AccountWindow)
        state = copy.__dict__
        state.update(self.__dict__)
        state.update(changes)
        return copy

    def unused(self, rule: str) -> list[Movement]:
        taken = self.used.get(rule)
        if not taken:
            return list(self.movements)
        return [m for m in self.movements if m.notification_id not in taken]

    def unused_since(self, rule: str, since: datetime) -> list[Movement]:
        """`unused(rule)` of the movements after `since`, in the window's order."""
        taken = self.used.get(rule)
        if not taken:
            return [m for m in self.movements if m.at > since]
        # The set lookup first: after an alert most of the window is taken, and it is the
        # cheaper test (a datetime comparison costs about twice as much).
        return [m for m in self.movements if m.notification_id not in taken and m.at > since]

    def pruned(self, now: datetime, keep_s: int, new_account_s: int) -> AccountWindow:
        """Forget what no rule can look at again (the new-account rule keeps the first
        days), and the oldest beyond WINDOW_MOVEMENTS_MAX."""
        return self._pruned_by_time(now, keep_s, new_account_s)._capped()

    def _capped(self) -> AccountWindow:
        excess = len(self.movements) - WINDOW_MOVEMENTS_MAX
        if excess <= 0:
            return self
        gone_ids = {m.notification_id for m in self.movements[:excess]}
        kept = self.movements[excess:]
        # The newest in the same order: as ordered as before.
        order = (kept, True) if self.in_time_order() else None
        return self.but(movements=kept, used=_without(self.used, gone_ids), order=order)

    def in_time_order(self) -> bool:
        """Whether no movement is earlier than the one before it (worked out once)."""
        if self.order is not None and self.order[0] is self.movements:
            return self.order[1]
        ordered = all(a.at <= b.at for a, b in itertools.pairwise(self.movements))
        # A cache of what the movements already say: the window stays what it was.
        object.__setattr__(self, "order", (self.movements, ordered))
        return ordered

    def with_movement(
        self, movement: Movement, used: dict[str, frozenset[int]], tallies: object
    ) -> AccountWindow:
        """The window with `movement` added last, `used` and `tallies` in place of its own."""
        movements = (*self.movements, movement)
        last = self.movements[-1].at if self.movements else None
        ordered = self.in_time_order() and (last is None or last <= movement.at)
        return self.but(movements=movements, used=used, tallies=tallies, order=(movements, ordered))

    def _pruned_by_time(self, now: datetime, keep_s: int, new_account_s: int) -> AccountWindow:
        """Without the movements no later than `now` less `keep_s` and after the first
        days (`new_account_s` from opening)."""
        horizon = now - timedelta(seconds=keep_s)
        young_until = self.opened_at + timedelta(seconds=new_account_s) if self.opened_at else None
        if not self.movements or (young_until is not None and young_until >= horizon):
            return self  # nothing is both past the horizon and after the first days
        if self.in_time_order():
            # What leaves is one stretch: after the first days, up to the horizon.
            start = 0 if young_until is None else bisect_right(self.movements, young_until, key=_AT)
            end = bisect_right(self.movements, horizon, key=_AT)
            if end <= start:
                return self
            gone_ids = {m.notification_id for m in self.movements[start:end]}
            kept = self.movements[:start] + self.movements[end:]
            used = _without(self.used, gone_ids)
            return self.but(movements=kept, used=used, order=(kept, True))
        if min(map(_AT, self.movements)) > horizon:
            return self
        gone = [
            m
            for m in self.movements
            if not (m.at > horizon or (young_until is not None and m.at <= young_until))
        ]
        gone_ids = {m.notification_id for m in gone}
        kept = tuple(m for m in self.movements if m.notification_id not in gone_ids)
        return self.but(movements=kept, used=_without(self.used, gone_ids))

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "version": self.version,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "branch": self.branch,
            "last_movement_at": self.last_movement_at.isoformat()
            if self.last_movement_at
            else None,
            "movements": [m.to_json() for m in self.movements],
            "used": {rule: sorted(ids) for rule, ids in sorted(self.used.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountWindow:
        def moment(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return cls(
            account_id=data["account_id"],
            version=data["version"],
            opened_at=moment(data["opened_at"]),
            branch=data.get("branch"),
            last_movement_at=moment(data["last_movement_at"]),
            movements=tuple(Movement.from_json(m) for m in data["movements"]),
            used={rule: frozenset(ids) for rule, ids in data["used"].items()},
        )


_WINDOW_FIELDS = frozenset(f.name for f in fields(AccountWindow))


def _without(used: dict[str, frozenset[int]], gone_ids: set[int]) -> dict[str, frozenset[int]]:
    """`used` less the movements that left the window (rules left with none dropped)."""
    kept = {
        rule: taken if taken.isdisjoint(gone_ids) else taken - gone_ids
        for rule, taken in used.items()
    }
    return {rule: taken for rule, taken in kept.items() if taken}
