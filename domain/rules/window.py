"""What the rules remember of one account: its recent movements and which of them are
already the evidence of an alert, per rule. Kept by the alerts projection in PostgreSQL
(as JSON) so a restart or a replay gives the same alerts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

CREDIT = "credit"
DEBIT = "debit"


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

    def unused(self, rule: str) -> list[Movement]:
        taken = self.used.get(rule, frozenset())
        return [m for m in self.movements if m.notification_id not in taken]

    def pruned(self, now: datetime, keep_s: int, new_account_s: int) -> AccountWindow:
        """Forget what no rule can look at again; the new-account rule keeps the first days."""
        horizon = now - timedelta(seconds=keep_s)
        young_until = self.opened_at + timedelta(seconds=new_account_s) if self.opened_at else None
        kept = tuple(
            m
            for m in self.movements
            if m.at > horizon or (young_until is not None and m.at <= young_until)
        )
        ids = {m.notification_id for m in kept}
        used = {rule: frozenset(i for i in taken if i in ids) for rule, taken in self.used.items()}
        return replace(self, movements=kept, used={r: t for r, t in used.items() if t})

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
