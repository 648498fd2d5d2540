"""The alerts projection's rule windows in PostgreSQL: a header per account
(`rule_windows`) and a row per movement (`rule_window_movements`) naming the rules whose
evidence it already is. A batch writes what changed in each window it touched (the header,
the movements that came and went, the rare evidence marks), never a whole window: storing
windows whole as JSON cost every event O(window) in the worker and in PostgreSQL.

Windows that earlier versions stored whole (`rule_windows.state`, JSON text) are still
read; their next save writes them as rows and clears `state`, so a read model migrates
as its accounts move, with no downtime."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final
from uuid import UUID

import orjson
from psycopg import AsyncConnection

from domain.rules.config import RULES
from domain.rules.window import AccountWindow, Movement
from infrastructure.postgres.arrays import execute_typed
from projections.envelope import Envelope

# Windows held between batches by a worker: at most this many, and at most this many
# movements in all (about 560 bytes each in memory, so up to about 1.1 GiB), so that the
# worker's memory stays bounded however busy its accounts (a window holds up to
# WINDOW_MOVEMENTS_MAX, a day of the account's movements or a new account's first week).
# A window let go is read from PostgreSQL again when its account next moves. Measured: 2,000
# accounts moving 1,200 times a second between them fill 1.4 million in 20 minutes.
WINDOWS_CACHED_MAX = 50_000
MOVEMENTS_CACHED_MAX = 2_000_000
# The rules a movement is evidence for travel to PostgreSQL joined by this (rule names are
# identifiers): `unnest` cannot take an array of arrays of different lengths.
RULES_SEPARATOR: Final = ","
assert not any(RULES_SEPARATOR in rule for rule in RULES), "a rule name holds the separator"
# A movement's columns, in the order of `Movement`'s fields.
MOVEMENT_FIELDS: Final = (
    "notification_id, transaction_id, at, kind, direction, amount_minor, currency, channel, "
    "counterparty_account_id"
)


class WindowCache:
    """The windows this process last committed, by account. A batch still reads every
    window's stored version, but the window itself only where that version is not the one
    held (another worker scored the account since, or it was never held): reading the
    windows was most of a batch's reading. Windows are immutable; the oldest go past
    `size_max` windows or `movements_max` movements in all, whichever comes first."""

    def __init__(
        self, size_max: int = WINDOWS_CACHED_MAX, movements_max: int = MOVEMENTS_CACHED_MAX
    ) -> None:
        self._size_max = size_max
        self._movements_max = movements_max
        self._movements = 0
        self._windows: OrderedDict[UUID, AccountWindow] = OrderedDict()

    @property
    def movements(self) -> int:
        return self._movements

    def get(self, account_id: UUID) -> AccountWindow | None:
        return self._windows.get(account_id)

    def keep(self, windows: Mapping[UUID, AccountWindow]) -> None:
        """After the transaction that stored them has committed, never before."""
        for account_id, window in windows.items():
            held = self._windows.get(account_id)
            if held is not None:
                self._movements -= len(held.movements)
            self._windows[account_id] = window
            self._windows.move_to_end(account_id)
            self._movements += len(window.movements)
        while self._windows and (
            len(self._windows) > self._size_max or self._movements > self._movements_max
        ):
            _, oldest = self._windows.popitem(last=False)
            self._movements -= len(oldest.movements)


@dataclass
class LoadedWindows:
    """A batch's windows as stored (an account never stored has none), and which of them
    are still one JSON state: their movements have no rows yet."""

    windows: dict[UUID, AccountWindow] = field(default_factory=dict)
    legacy: set[UUID] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class WindowChange:
    """A window to save, beside the one its stored rows hold: None when they are not known
    (a legacy JSON state, or a window rebuilt from its stream), and then they are all
    replaced."""

    account_id: UUID
    stored: AccountWindow | None
    window: AccountWindow


async def load_windows(
    conn: AsyncConnection[Any], events: Sequence[Envelope], cache: WindowCache | None
) -> LoadedWindows:
    """The windows of the batch's accounts: the header of each, in one query, then the
    movements of those whose stored version is not the one held, in one more."""
    ids = list({e.aggregate_id for e in events if e.is_account_event})
    held = dict(zip(ids, [cache.get(i) if cache else None for i in ids], strict=True))
    cursor = await execute_typed(
        conn,
        "SELECT r.account_id, r.version = k.version, r.version, r.opened_at, r.branch, "
        "r.last_movement_at, CASE WHEN r.version = k.version THEN NULL ELSE r.state END "
        "FROM unnest(%b::uuid[], %b::bigint[]) AS k(account_id, version) "
        "JOIN rule_windows r ON r.account_id = k.account_id",
        (ids, [-1 if w is None else w.version for w in held.values()]),
        binary=True,
    )
    out = LoadedWindows()
    headers: dict[UUID, AccountWindow] = {}
    for account_id, same, version, *header, state in await cursor.fetchall():
        if same:
            window = held[account_id]
            assert window is not None, "a window is left unread only when it is held"
            out.windows[account_id] = window
        elif state is not None:
            out.windows[account_id] = AccountWindow.from_json(orjson.loads(state))
            out.legacy.add(account_id)
        else:
            headers[account_id] = AccountWindow(str(account_id), int(version), *header)
    out.windows.update(await _with_movements(conn, headers))
    return out


async def _with_movements(
    conn: AsyncConnection[Any], headers: dict[UUID, AccountWindow]
) -> dict[UUID, AccountWindow]:
    """The headers with their movements and evidence marks. An account's events reach the
    store in version order, so its movements in notification order are the window's. Rows
    name their account by its place in the list sent (parsing and hashing a UUID per row
    was a third of reading them)."""
    if not headers:
        return {}
    cursor = await execute_typed(
        conn,
        f"SELECT k.place, {MOVEMENT_FIELDS}, m.used "
        "FROM unnest(%b::uuid[]) WITH ORDINALITY AS k(account_id, place) "
        "JOIN rule_window_movements m ON m.account_id = k.account_id "
        "ORDER BY k.place, m.notification_id",
        (list(headers),),
        binary=True,
    )
    movements: list[list[Movement]] = [[] for _ in headers]
    used: dict[int, dict[str, set[int]]] = {}
    for row in await cursor.fetchall():
        place = row[0] - 1
        movement = Movement(*row[1:-1])
        movements[place].append(movement)
        for rule in row[-1]:
            marks = used.setdefault(place, {})
            marks.setdefault(rule, set()).add(movement.notification_id)
    return {
        account_id: replace(
            header,
            movements=tuple(movements[place]),
            used={rule: frozenset(ids) for rule, ids in used.get(place, {}).items()},
        )
        for place, (account_id, header) in enumerate(headers.items())
    }


@dataclass
class _Writes:
    """What a batch's saves change in the stored rows, as columns for `unnest`."""

    headers: list[tuple[UUID, AccountWindow]] = field(default_factory=list)
    replaced: list[UUID] = field(default_factory=list)  # accounts whose rows all go first
    gone: list[tuple[UUID, int]] = field(default_factory=list)
    new: list[tuple[UUID, Movement, str]] = field(default_factory=list)
    marked: list[tuple[UUID, int, str]] = field(default_factory=list)


def _writes(changes: Iterable[WindowChange]) -> _Writes:
    """The rows to write, found by comparing notification ids (never whole windows)."""
    out = _Writes()
    for change in changes:
        account_id, stored, window = change.account_id, change.stored, change.window
        out.headers.append((account_id, window))
        marks = _marks(window)
        # Rare: an alert took earlier movements as evidence.
        marked = stored is not None and stored.used != window.used
        if stored is None:
            out.replaced.append(account_id)
            out.new.extend(
                (account_id, m, marks.get(m.notification_id, "")) for m in window.movements
            )
            continue
        held = len(stored.movements)
        if not held or window.movements[held - 1 : held] == stored.movements[-1:]:
            # Nothing left the window (the usual case, found without a pass over it): the
            # window is the stored movements then the new ones, as scoring builds it.
            out.new.extend(
                (account_id, m, marks.get(m.notification_id, "")) for m in window.movements[held:]
            )
            kept = {m.notification_id for m in stored.movements} if marked else set()
        else:
            before = {m.notification_id for m in stored.movements}
            after = {m.notification_id for m in window.movements}
            out.gone.extend((account_id, n) for n in before - after)
            out.new.extend(
                (account_id, m, marks.get(m.notification_id, ""))
                for m in window.movements
                if m.notification_id not in before
            )
            kept = before & after
        if marked:
            out.marked.extend(
                (account_id, n, marks.get(n, "")) for n in sorted(_remarked(stored, window) & kept)
            )
    return out


def _marks(window: AccountWindow) -> dict[int, str]:
    """The rules each movement is evidence for, by notification id (most have none)."""
    rules: dict[int, list[str]] = {}
    for rule, ids in sorted(window.used.items()):
        for notification_id in ids:
            rules.setdefault(notification_id, []).append(rule)
    return {n: RULES_SEPARATOR.join(names) for n, names in rules.items()}


def _remarked(stored: AccountWindow, window: AccountWindow) -> set[int]:
    """The movements whose evidence marks differ between the two windows."""
    empty: frozenset[int] = frozenset()
    changed: set[int] = set()
    for rule in stored.used.keys() | window.used.keys():
        changed |= stored.used.get(rule, empty) ^ window.used.get(rule, empty)
    return changed


async def save_windows(conn: AsyncConnection[Any], changes: Collection[WindowChange]) -> None:
    """Store the windows' changes with at most five statements, whatever their number."""
    if not changes:
        return
    writes = _writes(changes)
    await _save_headers(conn, writes.headers)
    if writes.replaced:
        await execute_typed(
            conn,
            "DELETE FROM rule_window_movements WHERE account_id = ANY(%b::uuid[])",
            (writes.replaced,),
        )
    if writes.gone:
        await execute_typed(
            conn,
            "DELETE FROM rule_window_movements m "
            "USING unnest(%b::uuid[], %b::bigint[]) AS g(account_id, notification_id) "
            "WHERE m.account_id = g.account_id AND m.notification_id = g.notification_id",
            tuple(map(list, zip(*writes.gone, strict=True))),
        )
    if writes.new:
        await _insert_movements(conn, writes.new)
    if writes.marked:
        await execute_typed(
            conn,
            "UPDATE rule_window_movements m "
            f"SET used = string_to_array(u.rules, '{RULES_SEPARATOR}') "
            "FROM unnest(%b::uuid[], %b::bigint[], %b::text[]) AS u(account, n, rules) "
            "WHERE m.account_id = u.account AND m.notification_id = u.n",
            tuple(map(list, zip(*writes.marked, strict=True))),
        )


async def _save_headers(
    conn: AsyncConnection[Any], headers: Sequence[tuple[UUID, AccountWindow]]
) -> None:
    """Upsert the headers; `state` NULL says the movements are rows (a legacy one converts)."""
    await execute_typed(
        conn,
        "INSERT INTO rule_windows (account_id, version, opened_at, branch, last_movement_at, "
        "state) SELECT *, NULL FROM unnest(%b::uuid[], %b::bigint[], %b::timestamptz[], "
        "%b::text[], %b::timestamptz[]) "
        "ON CONFLICT (account_id) DO UPDATE SET version = EXCLUDED.version, "
        "opened_at = EXCLUDED.opened_at, branch = EXCLUDED.branch, "
        "last_movement_at = EXCLUDED.last_movement_at, state = NULL",
        (
            [account_id for account_id, _ in headers],
            [w.version for _, w in headers],
            [w.opened_at for _, w in headers],
            [w.branch for _, w in headers],
            [w.last_movement_at for _, w in headers],
        ),
    )


async def _insert_movements(
    conn: AsyncConnection[Any], new: Sequence[tuple[UUID, Movement, str]]
) -> None:
    await execute_typed(
        conn,
        f"INSERT INTO rule_window_movements (account_id, {MOVEMENT_FIELDS}, used) "
        f"SELECT a, n, t, at, k, d, amount, c, ch, cp, string_to_array(u, '{RULES_SEPARATOR}') "
        "FROM unnest("
        "%b::uuid[], %b::bigint[], %b::text[], %b::timestamptz[], %b::text[], %b::text[], "
        "%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[]) "
        "AS m(a, n, t, at, k, d, amount, c, ch, cp, u)",
        (
            [a for a, _, _ in new],
            [m.notification_id for _, m, _ in new],
            [m.transaction_id for _, m, _ in new],
            [m.at for _, m, _ in new],
            [m.kind for _, m, _ in new],
            [m.direction for _, m, _ in new],
            [m.amount_minor for _, m, _ in new],
            [m.currency for _, m, _ in new],
            [m.channel for _, m, _ in new],
            [m.counterparty_account_id for _, m, _ in new],
            [rules for _, _, rules in new],
        ),
    )
