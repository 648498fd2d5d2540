"""The SQL that applies a batch's folded rows (`projections/batch.py`): one statement per
table, whatever the number of rows, inside the batch transaction of
`projection_store.apply_batch` (tables unqualified: the transaction's search_path names
the live read models or a replay's shadow).

Arrays go in binary (`%b`: psycopg's text form of a thousand-element array costs more
than the statement) and are cast explicitly, so an all-NULL column or a list of small
ints has the column's type whatever psycopg would guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from psycopg import AsyncConnection

from infrastructure.postgres.arrays import column_arrays, execute_typed
from infrastructure.readmodels.balances_cache import (
    CacheEntry,
    cache_entry_columns,
    newest_entries,
)
from infrastructure.readmodels.compliance_rows import (
    apply_case_events,
    apply_suppressions,
    apply_watchlist,
)
from projections.batch import AccountChange, BatchWrites, KpiTotal
from projections.rows import AccountOpenedRow, StatementLine

# Each statement's unnest arrays, in order, by the attribute each is read from.
OPENED_COLUMNS: Final = (
    "account_id",
    "owner",
    "branch",
    "currency",
    "overdraft_limit_minor",
    "version",
    "at",
    "notification_id",
)
ACCOUNT_COLUMNS: Final = (
    "account_id",
    "version",
    "at",
    "notification_id",
    "balance_minor",
    "last_transaction_at",
    "status",
    "held_minor",
)
LINE_COLUMNS: Final = (
    "account_id",
    "version",
    "transaction_id",
    "counterparty_account_id",
    "direction",
    "kind",
    "amount_minor",
    "balance_after_minor",
    "currency",
    "reference",
    "channel",
    "actor_subject",
    "actor_role",
    "occurred_at",
    "correlation_id",
    "notification_id",
    "reverses",
)
HOLD_PLACED_COLUMNS: Final = (
    "hold_id",
    "account_id",
    "to_account_id",
    "amount_minor",
    "currency",
    "reference",
    "review",
    "expires_at",
    "placed_at",
    "version",
    "notification_id",
)
HOLD_ENDED_COLUMNS: Final = (
    "hold_id",
    "status",
    "ended_at",
    "captured_minor",
    "capture_transaction_id",
    "end_reason",
    "version",
    "notification_id",
)

INSERT_OPENED: Final = (
    "INSERT INTO accounts AS a (account_id, owner, branch, currency, status, balance_minor, "
    "overdraft_limit_minor, version, opened_at, updated_at, notification_id) "
    "SELECT account_id, owner, branch, currency, 'open', 0, overdraft_limit_minor, version, "
    "at, at, notification_id FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[], "
    "%b::bigint[], %b::bigint[], %b::timestamptz[], %b::bigint[]) AS o(account_id, owner, "
    "branch, currency, overdraft_limit_minor, version, at, notification_id) "
    f"ON CONFLICT (account_id) DO NOTHING RETURNING {cache_entry_columns('a')}"
)

# Both return the rows they wrote as the balances cache's entries, so the cache needs no
# second read of them. One row per account; NULL leaves a column as it is (no movement, or
# no status change).
# `a.version < c.version`: the same guard as a single row's update.
UPDATE_ACCOUNTS: Final = (
    "UPDATE accounts AS a SET balance_minor = coalesce(c.balance_minor, a.balance_minor), "
    "last_transaction_at = coalesce(c.last_transaction_at, a.last_transaction_at), "
    "status = coalesce(c.status, a.status), held_minor = coalesce(c.held_minor, a.held_minor), "
    "version = c.version, updated_at = c.at, notification_id = c.notification_id "
    "FROM unnest(%b::uuid[], %b::bigint[], %b::timestamptz[], %b::bigint[], %b::bigint[], "
    "%b::timestamptz[], %b::text[], %b::bigint[]) AS c(account_id, version, at, "
    "notification_id, balance_minor, last_transaction_at, status, held_minor) "
    "WHERE a.account_id = c.account_id AND a.version < c.version "
    f"RETURNING {cache_entry_columns('a')}"
)

INSERT_LINES: Final = (
    "INSERT INTO transactions (account_id, version, transaction_id, "
    "counterparty_account_id, direction, kind, amount_minor, balance_after_minor, currency, "
    "reference, channel, actor_subject, actor_role, occurred_at, correlation_id, "
    "notification_id, reverses) SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::uuid[], "
    "%b::uuid[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::text[], %b::bigint[], "
    "%b::uuid[]) ON CONFLICT (account_id, version) DO NOTHING"
)

# A reversal's total on the original's line of the same account (the line is earlier in
# the account's stream, so already there).
UPDATE_REVERSED: Final = (
    "UPDATE transactions AS t SET reversed_minor = greatest(t.reversed_minor, c.reversed_minor) "
    "FROM unnest(%b::uuid[], %b::uuid[], %b::bigint[]) AS c(account_id, transaction_id, "
    "reversed_minor) WHERE t.account_id = c.account_id AND t.transaction_id = c.transaction_id"
)

INSERT_HOLDS: Final = (
    "INSERT INTO holds (hold_id, account_id, to_account_id, amount_minor, currency, "
    "reference, review, expires_at, placed_at, version, notification_id, status) "
    "SELECT *, 'pending' FROM unnest(%b::uuid[], %b::uuid[], %b::uuid[], %b::bigint[], "
    "%b::text[], %b::text[], %b::jsonb[], %b::timestamptz[], %b::timestamptz[], %b::bigint[], "
    "%b::bigint[]) ON CONFLICT (hold_id) DO NOTHING"
)

UPDATE_HOLDS: Final = (
    "UPDATE holds AS h SET status = c.status, ended_at = c.ended_at, "
    "captured_minor = c.captured_minor, capture_transaction_id = c.capture_transaction_id, "
    "end_reason = c.end_reason, version = c.version, notification_id = c.notification_id "
    "FROM unnest(%b::uuid[], %b::text[], %b::timestamptz[], %b::bigint[], %b::uuid[], "
    "%b::text[], %b::bigint[], %b::bigint[]) AS c(hold_id, status, ended_at, captured_minor, "
    "capture_transaction_id, end_reason, version, notification_id) "
    "WHERE h.hold_id = c.hold_id AND h.version < c.version"
)

INSERT_BRANCHES: Final = (
    "INSERT INTO kpi_account_branches (account_id, branch) "
    "SELECT * FROM unnest(%b::uuid[], %b::text[]) ON CONFLICT DO NOTHING"
)

ADD_KPIS_HOURLY: Final = (
    "INSERT INTO kpis_hourly (hour, currency, metric, count, sum_minor) "
    "SELECT * FROM unnest(%b::timestamptz[], %b::text[], %b::text[], %b::bigint[], "
    "%b::numeric[]) ON CONFLICT (hour, currency, metric) DO UPDATE SET "
    "count = kpis_hourly.count + EXCLUDED.count, "
    "sum_minor = kpis_hourly.sum_minor + EXCLUDED.sum_minor"
)

# An account whose branch the projection does not know adds nothing per branch, as a
# single increment's lookup would find nothing.
ADD_KPIS_BRANCH: Final = (
    "INSERT INTO kpis_branch (branch, currency, metric, count, sum_minor) "
    "SELECT b.branch, k.currency, k.metric, sum(k.count)::bigint, sum(k.sum_minor) "
    "FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::bigint[], %b::numeric[]) "
    "AS k(account_id, currency, metric, count, sum_minor) "
    "JOIN kpi_account_branches b ON b.account_id = k.account_id "
    "GROUP BY b.branch, k.currency, k.metric "
    "ON CONFLICT (branch, currency, metric) DO UPDATE SET "
    "count = kpis_branch.count + EXCLUDED.count, "
    "sum_minor = kpis_branch.sum_minor + EXCLUDED.sum_minor"
)


async def write_batch(conn: AsyncConnection[Any], writes: BatchWrites) -> list[CacheEntry]:
    """Write the rows; return the balances cache's entries of the account rows written
    (the newest of each account), for the caller to cache once it has committed."""
    # Openings before the updates of the same accounts, branches before the KPIs that
    # look them up: the order the rows have one by one.
    entries = await _write_accounts(conn, writes)
    if writes.lines:
        await execute_typed(conn, INSERT_LINES, _line_columns(writes.lines))
    if writes.reversed:
        reversed_ = list(writes.reversed.values())
        await execute_typed(
            conn,
            UPDATE_REVERSED,
            column_arrays(reversed_, ("account_id", "transaction_id", "reversed_minor")),
        )
    if writes.holds_placed:
        await execute_typed(
            conn, INSERT_HOLDS, column_arrays(writes.holds_placed, HOLD_PLACED_COLUMNS)
        )
    if writes.holds_ended:
        ended = list(writes.holds_ended.values())
        await execute_typed(conn, UPDATE_HOLDS, column_arrays(ended, HOLD_ENDED_COLUMNS))
    if writes.branches:
        branches = list(writes.branches.values())
        await execute_typed(
            conn, INSERT_BRANCHES, ([b.account_id for b in branches], [b.branch for b in branches])
        )
    if writes.kpis_hourly:
        await execute_typed(conn, ADD_KPIS_HOURLY, _kpi_columns(writes.kpis_hourly))
    if writes.kpis_by_account:
        await execute_typed(conn, ADD_KPIS_BRANCH, _kpi_columns(writes.kpis_by_account))
    if writes.case_events:
        await apply_case_events(conn, writes.case_events)
    if writes.watchlist:
        await apply_watchlist(conn, list(writes.watchlist.values()))
    if writes.suppressions or writes.suppressed_alerts:
        await apply_suppressions(conn, writes.suppressions, writes.suppressed_alerts)
    return entries


async def _write_accounts(conn: AsyncConnection[Any], writes: BatchWrites) -> list[CacheEntry]:
    opened: list[CacheEntry] = []
    updated: list[CacheEntry] = []
    if writes.opened:
        cursor = await execute_typed(conn, INSERT_OPENED, _opened_columns(writes.opened))
        opened = await cursor.fetchall()
    if writes.accounts:
        cursor = await execute_typed(
            conn, UPDATE_ACCOUNTS, _account_columns([*writes.accounts.values()])
        )
        updated = await cursor.fetchall()
    if not updated:
        return opened
    return [*newest_entries(opened, updated).values()]


def _opened_columns(rows: list[AccountOpenedRow]) -> list[list[Any]]:
    return column_arrays(rows, OPENED_COLUMNS)


def _account_columns(changes: list[AccountChange]) -> list[list[Any]]:
    return column_arrays(changes, ACCOUNT_COLUMNS)


def _line_columns(lines: list[StatementLine]) -> list[list[Any]]:
    return column_arrays(lines, LINE_COLUMNS)


def _kpi_columns(totals: Mapping[tuple[Any, str, str], KpiTotal]) -> tuple[list[Any], ...]:
    keys = list(totals)
    return (
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [totals[k].count for k in keys],
        [totals[k].sum_minor for k in keys],
    )
