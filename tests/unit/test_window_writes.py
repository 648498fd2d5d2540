"""What a save writes for a window, against a model of the stored rows: applying each
batch's writes to the rows the window had leaves exactly the rows of the window after it,
whatever the rules pruned or took as evidence in between."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.rules.config import RulesConfig
from domain.rules.engine import evaluate, opened
from domain.rules.window import AccountWindow, Movement
from infrastructure.monitoring.windows import RULES_SEPARATOR, WindowChange, _writes

T0 = datetime(2026, 6, 1, tzinfo=UTC)
Rows = dict[tuple[UUID, int], tuple[Movement, frozenset[str]]]

# (minutes since the last movement, amount in pence, deposit?): cash deposits just under
# the reporting threshold (structuring), large ones, quiet days (pruning).
steps = st.lists(
    st.tuples(
        st.sampled_from([1, 30, 120, 2 * 24 * 60, 9 * 24 * 60]),
        st.sampled_from([1_000, 950_000, 6_000_000]),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


def rows_of(account_id: UUID, window: AccountWindow) -> Rows:
    marks: dict[int, set[str]] = {}
    for rule, ids in window.used.items():
        for n in ids:
            marks.setdefault(n, set()).add(rule)
    return {
        (account_id, m.notification_id): (m, frozenset(marks.get(m.notification_id, ())))
        for m in window.movements
    }


def applied(rows: Rows, changes: list[WindowChange]) -> Rows:
    """The rows after the writes, as the save's statements change them."""
    writes = _writes(changes)
    out = {k: v for k, v in rows.items() if k[0] not in writes.replaced}
    for key in writes.gone:
        del out[key]
    for account_id, movement, rules in writes.new:
        key = (account_id, movement.notification_id)
        assert key not in out, "a new movement is inserted once"
        out[key] = (movement, frozenset(filter(None, rules.split(RULES_SEPARATOR))))
    for account_id, n, rules in writes.marked:
        movement, _ = out[(account_id, n)]
        out[(account_id, n)] = (movement, frozenset(filter(None, rules.split(RULES_SEPARATOR))))
    return out


@settings(max_examples=60, deadline=None)
@given(steps, st.integers(min_value=1, max_value=5), st.booleans())
def test_each_batch_writes_turn_the_stored_rows_into_the_new_window(
    moves: list[tuple[int, int, bool]], batch_size: int, rows_unknown_first: bool
) -> None:
    account_id = uuid4()
    config = RulesConfig()
    window = opened(AccountWindow(str(account_id)), T0, "001", 1)
    rows: Rows = {}
    at = T0 + timedelta(days=8)
    for start in range(0, len(moves), batch_size):
        stored = None if rows_unknown_first and start == 0 else window
        for minutes, amount_minor, deposit in moves[start : start + batch_size]:
            at += timedelta(minutes=minutes)
            n = window.version + 1
            movement = Movement(
                n, f"t{n}", at, "deposit" if deposit else "withdrawal",
                "credit" if deposit else "debit", amount_minor, "GBP", "cash", None,
            )  # fmt: skip
            _, window = evaluate(config, window, movement, n)
        rows = applied(rows, [WindowChange(account_id, stored, window)])
        assert rows == rows_of(account_id, window)
