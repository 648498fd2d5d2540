"""Running totals of an account's rule window, so that the rules' usual verdict (nothing to
raise) costs a few steps per event instead of passes over the whole window.

A window keeps a day of its account's movements (a new account's first week), and every
event asked the timed rules their first question by a pass over all of it: how many
movements in the last hour, how much out in the last day, is there an incoming payment large
enough to pass through, how much out since opening. Here each question has a running answer
over the movements that rule has not used yet:

- a `Slide` holds the movements of one kind later than a moment, in time order, and their
  total: as time moves on, the oldest leave it from the front;
- the new-account total is a plain sum over the account's first days.

The answers are exact: a rule whose answer says it may fire reads the window itself for its
evidence, as before. What a running total cannot follow it counts again from the window:
an alert of the rule (its evidence leaves the unused movements), a movement older than the
newest one (two command processes' clocks may disagree), a question about an earlier moment
than the last one. Movements the window's cap drops (the oldest by position) leave the
totals one by one, or, held anywhere but at a slide's front, have that slide counted
again. Kept with the window in memory only (never stored): a window read from the store counts once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta

from domain.rules import window as window_module
from domain.rules.config import RulesConfig
from domain.rules.window import CREDIT, DEBIT, AccountWindow, Movement

# The rules with running totals, in the order of `Tallies.taken`.
TALLIED = ("velocity", "pass_through", "new_account_outflow")


class Slide:
    """Movements later than `since`, in time order, with the sum of their amounts."""

    __slots__ = ("items", "since", "total")

    def __init__(self, since: datetime, movements: Iterable[Movement]) -> None:
        self.since = since
        self.items = deque(sorted((m for m in movements if m.at > since), key=_at))
        self.total = sum(m.amount_minor for m in self.items)

    def advance(self, since: datetime) -> bool:
        """Forget what is no later than `since`; False if `since` is earlier than the moment
        the slide already moved to (what lay between is gone: count again)."""
        if since < self.since:
            return False
        items = self.items
        while items and items[0].at <= since:
            self.total -= items.popleft().amount_minor
        self.since = since
        return True

    def add(self, movement: Movement) -> bool:
        """Take a new movement; False if it is older than the newest held (count again)."""
        if movement.at <= self.since:
            return True
        if self.items and movement.at < self.items[-1].at:
            return False
        self.items.append(movement)
        self.total += movement.amount_minor
        return True


def _at(movement: Movement) -> datetime:
    return movement.at


class Tallies:
    """The running totals of one window state: the one whose movements tuple, opening time
    and used sets of the tallied rules they name (by identity: windows are immutable)."""

    __slots__ = (
        "config",
        "currency",
        "incoming",
        "incoming_min",
        "movements",
        "opened_at",
        "outflows",
        "recent",
        "taken",
        "young_outflow",
    )

    def __init__(self, config: RulesConfig, window: AccountWindow, currency: str | None) -> None:
        self.config = config
        self.currency = currency
        self.incoming_min = (
            None if currency is None else config.minor(config.pass_through_incoming_min, currency)
        )
        self.movements: tuple[Movement, ...] | None = window.movements
        self.opened_at = window.opened_at
        self.taken = _taken(window)
        # Built when first asked, from the window as it is then.
        self.recent: Slide | None = None  # unused by velocity
        self.outflows: Slide | None = None  # debits unused by velocity
        self.incoming: Slide | None = None  # credits unused by pass-through, large enough
        self.young_outflow: int | None = None  # debits unused by new-account, first days

    @classmethod
    def of(cls, config: RulesConfig, window: AccountWindow) -> Tallies | None:
        """The window's totals if they are its own, else new ones; None for a window of
        movements in several currencies (an account has one: the rules then read it all)."""
        held = window.tallies
        if isinstance(held, Tallies) and held.describes(config, window):
            return held
        currencies = {m.currency for m in window.movements}
        if len(currencies) > 1:
            return None
        return cls(config, window, next(iter(currencies), None))

    def describes(self, config: RulesConfig, window: AccountWindow) -> bool:
        return (
            self.movements is window.movements
            and self.config is config
            and self.opened_at == window.opened_at
            and self.taken == _taken(window)
        )

    def add(self, movement: Movement) -> bool:
        """Take the movement being scored, before the rules ask; False if these totals
        cannot hold it (another currency). Until `settle` they describe no window: if
        scoring stops half-way, the next event counts again."""
        self.movements = None
        if self.currency is None:
            self.currency = movement.currency
            self.incoming_min = self.config.minor(
                self.config.pass_through_incoming_min, movement.currency
            )
        elif movement.currency != self.currency:
            return False
        if self.recent is not None and not self.recent.add(movement):
            self.recent = None
        if movement.direction == DEBIT:
            if self.outflows is not None and not self.outflows.add(movement):
                self.outflows = None
            if self.young_outflow is not None and self._young(movement):
                self.young_outflow += movement.amount_minor
        elif (
            self.incoming is not None
            and self._incoming(movement)
            and not self.incoming.add(movement)
        ):
            self.incoming = None
        return True

    # The rules' questions, about the window holding the movement being scored.

    def recent_count(self, window: AccountWindow, since: datetime) -> int:
        """How many movements later than `since` velocity has not used."""
        slide = self.recent
        if slide is None or not slide.advance(since):
            slide = self.recent = Slide(since, window.unused("velocity"))
        return len(slide.items)

    def outflow_total(self, window: AccountWindow, since: datetime) -> int:
        """The debits later than `since` velocity has not used, in all."""
        slide = self.outflows
        if slide is None or not slide.advance(since):
            debits = (m for m in window.unused("velocity") if m.direction == DEBIT)
            slide = self.outflows = Slide(since, debits)
        return slide.total

    def incoming_count(self, window: AccountWindow, since: datetime) -> int:
        """How many credits later than `since`, each at least pass-through's minimum, that
        rule has not used."""
        slide = self.incoming
        if slide is None or not slide.advance(since):
            credits = (m for m in window.unused("pass_through") if self._incoming(m))
            slide = self.incoming = Slide(since, credits)
        return len(slide.items)

    def young_outflow_total(self, window: AccountWindow) -> int:
        """The debits of the account's first days the new-account rule has not used."""
        if self.young_outflow is None:
            self.young_outflow = sum(
                m.amount_minor
                for m in window.unused("new_account_outflow")
                if m.direction == DEBIT and self._young(m)
            )
        return self.young_outflow

    def settle(self, fired: Iterable[str], scored: AccountWindow, after: AccountWindow) -> None:
        """After the rules: forget the totals of the rules that fired (their evidence is
        used now) and what pruning `scored` (the window the rules read) let go, and
        describe `after` from now on."""
        for rule in fired:
            if rule == "velocity":
                self.recent = self.outflows = None
            elif rule == "pass_through":
                self.incoming = None
            elif rule == "new_account_outflow":
                self.young_outflow = None
        if after.movements is not scored.movements:
            self._let_go(scored, after)
        self.movements = after.movements
        self.taken = _taken(after)

    def _let_go(self, scored: AccountWindow, after: AccountWindow) -> None:
        if len(after.movements) >= window_module.WINDOW_MOVEMENTS_MAX:
            # The cap dropped the oldest by position: at the cap that is every event, so
            # the dropped ones leave the totals one by one (they are almost always the
            # oldest in time too); anything else is counted again.
            excess = len(scored.movements) - len(after.movements)
            if scored.movements[excess:] == after.movements:
                for movement in scored.movements[:excess]:
                    self._drop(movement, scored)
            else:
                self.recent = self.outflows = self.incoming = None
                self.young_outflow = None
            return
        # Pruned by time: what left is no later than the horizon (now less the longest
        # window) and after the first days, so no first-days total held it, and no slide
        # does once it has moved to now less its width.
        now = after.last_movement_at
        assert now is not None
        config = self.config
        for slide, width_s in (
            (self.recent, config.velocity_count_window_s),
            (self.outflows, config.velocity_outflow_window_s),
            (self.incoming, config.pass_through_window_s),
        ):
            if slide is not None:
                slide.advance(max(slide.since, now - timedelta(seconds=width_s)))

    def _drop(self, movement: Movement, scored: AccountWindow) -> None:
        """Take a movement the cap dropped out of each total that holds it."""
        used = scored.used
        if movement.notification_id not in used.get("velocity", ()):
            self.recent = _without(self.recent, movement)
            if movement.direction == DEBIT:
                self.outflows = _without(self.outflows, movement)
        if movement.notification_id not in used.get("pass_through", ()) and self._incoming(
            movement
        ):
            self.incoming = _without(self.incoming, movement)
        if (
            self.young_outflow is not None
            and movement.direction == DEBIT
            and self._young(movement)
            and movement.notification_id not in used.get("new_account_outflow", ())
        ):
            self.young_outflow -= movement.amount_minor

    def _young(self, movement: Movement) -> bool:
        opened_at = self.opened_at
        if opened_at is None:
            return False
        young_until = opened_at + timedelta(seconds=self.config.new_account_window_s)
        return opened_at <= movement.at <= young_until

    def _incoming(self, movement: Movement) -> bool:
        minimum = self.incoming_min
        return (
            movement.direction == CREDIT
            and minimum is not None
            and (movement.amount_minor >= minimum)
        )


def _without(slide: Slide | None, movement: Movement) -> Slide | None:
    """The slide less a movement it may hold; None (count again) if it holds it anywhere
    but at the front."""
    if slide is None or movement.at <= slide.since:
        return slide  # not held
    if slide.items and slide.items[0] is movement:
        slide.total -= slide.items.popleft().amount_minor
        return slide
    return None


def _taken(window: AccountWindow) -> tuple[frozenset[int] | None, ...]:
    used = window.used
    return tuple(used.get(rule) for rule in TALLIED)
