"""Vigil's event-store recorder: the library's PostgreSQL recorder plus the command
replies table, written in the same transaction as the events it answers for."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier, Literal

from application.commands import ReplyRecord
from application.envelope import IndexRow
from application.ports import GroupState
from infrastructure.eventstore.schema import (
    COLUMN_TYPES,
    COLUMNS,
    INDEX_TABLE,
    append_only_statements,
    index_columns,
    index_create_statements,
)
from infrastructure.postgres.arrays import column_arrays, typed
from infrastructure.postgres.connect import store_session_options
from infrastructure.postgres.rendered import rendered

REPLIES_TABLE = "command_replies"
# One row, locked FOR UPDATE by each command group's write until its commit: the writers'
# turn. A row lock, not an advisory one, because it needs UPDATE on this table: a role
# that may only read cannot stall the writers by holding it.
WRITERS_TURN_TABLE = "event_writers_turn"
REPLY_COLUMNS = ("command_id", "kind", "subject", "fingerprint", "body")
EVENT_COLUMNS = ("originator_id", "originator_version", "topic", "state")


class VigilRecorder(PostgresApplicationRecorder):
    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        # The store's session options (`store_session_options`): the factory gives them to
        # the pool before it opens. A datastore made elsewhere gets them here, and the
        # connections its pool already made are replaced by ones carrying them.
        pool_kwargs = self.datastore.pool.kwargs
        assert isinstance(pool_kwargs, dict), "the library passes the pool a dict"
        options = str(pool_kwargs.get("options") or "")
        wanted = store_session_options(self.datastore.lock_timeout)
        if wanted not in options:
            pool_kwargs["options"] = f"{options} {wanted}".strip()
            self.datastore.pool.drain()
        schema = Identifier(self.datastore.schema)
        replies = Identifier(REPLIES_TABLE)
        # The primary key is what makes a command id unique: a second writer of
        # the same id fails here and its events roll back with it.
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{replies} ("
                "command_id uuid PRIMARY KEY, "
                "kind text NOT NULL, "
                "subject text NOT NULL, "
                "fingerprint text NOT NULL, "
                "body text NOT NULL, "
                "recorded_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema=schema, replies=replies)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{turn} "
                "(turn boolean PRIMARY KEY DEFAULT true CHECK (turn))"
            ).format(schema=schema, turn=Identifier(WRITERS_TURN_TABLE))
        )
        self.sql_create_statements.append(
            SQL("INSERT INTO {schema}.{turn} VALUES (true) ON CONFLICT DO NOTHING").format(
                schema=schema, turn=Identifier(WRITERS_TURN_TABLE)
            )
        )
        # The event index, and the append-only guards on all three tables: part of every
        # migration of the store, so no store exists without them.
        self.sql_create_statements.extend(index_create_statements(self.datastore.schema))
        self.sql_create_statements.extend(
            append_only_statements(
                self.datastore.schema, [self.events_table_name, REPLIES_TABLE, INDEX_TABLE]
            )
        )
        events = Identifier(self.datastore.schema, self.events_table_name)
        index_names = SQL(", ").join(Identifier(c) for c in COLUMNS)
        # A group in one statement, its own transaction: the writers' turn, then the
        # events, their index rows and the replies, and a notification of the relay's
        # channel (as the library's NOTIFY does; delivered at commit). Both inserts wait
        # for the lock (an InitPlan on the CTE that takes it, run before their first row is
        # drawn): so it comes before the first notification id, and two writers of one
        # command id cannot deadlock (the second holds no row while it waits). The index
        # takes each event's notification id from the rows just inserted. Arrays go over
        # the wire in binary (%b): no text escaping of thousands of values.
        #
        # The turn is a row lock (WRITERS_TURN_TABLE): a statement that inserts has already
        # taken ROW EXCLUSIVE on the table before it runs, so taking the library's
        # EXCLUSIVE table lock inside it would deadlock two writers. Writers of this
        # statement take turns on the row; a writer taking the table lock (the library's
        # own insert, or an older version during an upgrade) excludes them and is excluded
        # by them, since EXCLUSIVE and ROW EXCLUSIVE conflict. Either way, notification ids
        # are issued in commit order.
        #
        # Each statement is rendered to bytes once: psycopg renders a composed statement
        # again at every execute (quoting each identifier), which cost a single-transfer
        # group more than its judging. Identifiers here are ASCII names, the same in any
        # client encoding.
        self.insert_group_statement: bytes = rendered(
            SQL(
                "WITH locked AS MATERIALIZED (SELECT turn FROM {schema}.{turn} FOR UPDATE), "
                "inserted AS ("
                "INSERT INTO {events} (originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(%b::uuid[], %b::int8[], %b::text[], %b::bytea[]) "
                "WHERE (SELECT turn FROM locked) "
                "RETURNING notification_id, originator_id, originator_version), "
                "replied AS (INSERT INTO {schema}.{replies} ({reply_columns}) "
                "SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[]) "
                "WHERE (SELECT turn FROM locked)), "
                "notified AS MATERIALIZED (SELECT pg_notify({channel}, '') AS sent) "
                "INSERT INTO {index} (notification_id, {columns}) "
                "SELECT inserted.notification_id, {v_columns} FROM inserted "
                "JOIN unnest({index_arrays}) AS v({columns}) "
                "ON v.aggregate_id = inserted.originator_id "
                "AND v.version = inserted.originator_version CROSS JOIN notified"
            ).format(
                events=events,
                turn=Identifier(WRITERS_TURN_TABLE),
                schema=schema,
                replies=replies,
                reply_columns=SQL(", ").join(Identifier(c) for c in REPLY_COLUMNS),
                channel=Literal(self.channel_name),
                index=Identifier(self.datastore.schema, INDEX_TABLE),
                columns=index_names,
                v_columns=SQL(", ").join(Identifier("v", c) for c in COLUMNS),
                index_arrays=SQL(", ").join(SQL("%b::{}[]").format(SQL(t)) for t in COLUMN_TYPES),
            )
        )
        # One statement for a group's state: the events of its aggregates after the
        # versions held, then the replies already given to its command ids, as rows of one
        # result (the columns of the other kind NULL). One index range scan per aggregate:
        # the lateral subquery, fenced by OFFSET 0, is not flattened into a join the
        # planner may turn into a scan of the whole table.
        self.select_group_state_statement: bytes = rendered(
            SQL(
                "SELECT e.originator_id, e.originator_version, e.topic, e.state, "
                "NULL::uuid AS command_id, NULL AS kind, NULL AS subject, NULL AS fingerprint, "
                "NULL AS body "
                "FROM unnest(%b::uuid[], %b::int8[]) AS known(id, version) "
                "CROSS JOIN LATERAL (SELECT s.originator_id, s.originator_version, s.topic, "
                "s.state "
                "FROM {events} s WHERE s.originator_id = known.id "
                "AND s.originator_version > known.version "
                "ORDER BY s.originator_version OFFSET 0) e "
                "UNION ALL "
                "SELECT NULL, NULL, NULL, NULL, command_id, kind, subject, fingerprint, body "
                "FROM {schema}.{replies} WHERE command_id = ANY(%b::uuid[])"
            ).format(events=events, schema=schema, replies=replies)
        )
        self.select_first_events_statement: bytes = rendered(
            SQL(
                "SELECT originator_id, originator_version, topic, state FROM {events} "
                "WHERE originator_id = ANY(%b::uuid[]) AND originator_version = 1"
            ).format(events=events)
        )
        self.lock_table_statements = [
            statement
            for statement in map(rendered, self.lock_table_statements)
            if not statement.startswith(b"SET LOCAL lock_timeout")
        ]
        assert len(self.lock_table_statements) == 1, "the table lock, set for the session"

    def create_table(self) -> None:
        # The library runs CREATE TYPE every time and swallows the DuplicateObject error;
        # PostgreSQL still logs that ERROR, at every process start. A type that exists is
        # left alone instead (the caller holds the migration lock, so none appears between).
        #
        # An index that exists is left alone too: CREATE INDEX IF NOT EXISTS takes a SHARE
        # lock on its table before it finds the index there, and a process starting on a
        # live store would then hold one table's lock while it waits for another's, in an
        # order a writer's statement need not share: a deadlock (seen as a failed command).
        statements = self.sql_create_statements
        type_name = f"{self.datastore.schema}.{self.stored_event_type_name}"
        # Each statement's text, and the qualified name of the index it creates if missing.
        texts = [statement.as_string() for statement in statements]
        schema = self.datastore.schema
        index_names = [f"{schema}.{name}" if (name := _created_index(t)) else "" for t in texts]
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                "SELECT to_regtype(%s) IS NOT NULL AS found, "
                "array(SELECT name FROM unnest(%s::text[]) AS name "
                "WHERE name <> '' AND to_regclass(name) IS NOT NULL) AS indexes",
                (type_name, index_names),
            )
            row = curs.fetchone()
        assert row is not None, "SELECT returns one row"
        present = set(row["indexes"])
        self.sql_create_statements = [
            statement
            for statement, text, index in zip(statements, texts, index_names, strict=True)
            if not (row["found"] and "CREATE TYPE" in text) and index not in present
        ]
        try:
            super().create_table()
        finally:
            self.sql_create_statements = statements

    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        index_rows: Sequence[IndexRow] = (),
        replies: Sequence[ReplyRecord] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        """Events, their index rows and replies in one statement, its own transaction.

        The writers' lock comes first, as the library's table lock does in its own
        insert: writers take turns, so notification ids are issued in commit order (a
        reader tailing the log never passes a gap that fills later; the statement says
        how the two locks exclude each other). Then the statement writes the events, their
        index rows and the replies, and notifies the relay's channel. Two writers of one
        command id cannot deadlock: the second waits for the table lock before it writes
        anything. A lost optimistic-concurrency race or a command id already taken fails the
        whole transaction with an IntegrityError, and nothing of it is written.

        Without index rows or replies, this records exactly as the library's recorder
        does (and returns the notification ids, as it does).
        """
        if not index_rows and not replies:
            notification_ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return notification_ids
        assert not kwargs, f"no other arguments with index rows or replies: {sorted(kwargs)}"
        if not stored_events:
            return []
        # The ledger gives every event it saves its index row.
        assert len(index_rows) == len(stored_events), "one index row per stored event"
        # The connection is in autocommit: the statement is its transaction, committed
        # (or, failing, rolled back whole) with its reply. A failure leaves as an
        # IntegrityError when it was a lost race: the datastore translates psycopg's errors.
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            assert conn.autocommit, "the statement is its own transaction"
            curs.execute(
                self.insert_group_statement,
                typed(
                    self.insert_group_statement,
                    [
                        *column_arrays(stored_events, EVENT_COLUMNS),
                        *reply_columns(replies),
                        *index_columns(index_rows),
                    ],
                ),
                prepare=True,
            )
            written = curs.rowcount
        if written != len(stored_events):
            # Without the turn's row the statement writes nothing: say so, never lose it.
            raise RuntimeError(
                f"{written} of {len(stored_events)} events written: the store lacks its "
                f"{WRITERS_TURN_TABLE} row; run `vigil migrate`"
            )
        return None

    def select_group_state(
        self, versions: Mapping[UUID, int], command_ids: Iterable[UUID]
    ) -> GroupState:
        """In one round trip: every stored event of these aggregates after the given
        version (0: all of them), in order, and the replies already given to these ids."""
        ids = list(versions)
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            statement = self.select_group_state_statement
            cursor.execute(
                statement,
                typed(statement, (ids, [versions[i] for i in ids], list(command_ids))),
                prepare=True,
            )
            rows = cursor.fetchall()
        events: list[StoredEvent] = []
        replies: dict[UUID, ReplyRecord] = {}
        for row in rows:
            if row["command_id"] is None:
                events.append(_stored(row))
            else:
                replies[row["command_id"]] = _reply(row)
        # Each aggregate's events in version order, as mutating it needs them (a stable
        # sort by version: the order between aggregates does not matter).
        events.sort(key=_version)
        return GroupState(events=events, replies=replies)

    def select_first_events(self, originator_ids: Sequence[UUID]) -> list[StoredEvent]:
        if not originator_ids:
            return []
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            statement = self.select_first_events_statement
            cursor.execute(statement, typed(statement, (list(originator_ids),)), prepare=True)
            return [_stored(row) for row in cursor.fetchall()]


CREATED_INDEX = re.compile(r'CREATE (?:UNIQUE )?INDEX IF NOT EXISTS "?([a-z0-9_]+)"? ON ')


def _created_index(statement: str) -> str | None:
    """The name of the index `statement` creates if missing, if it is such a statement."""
    found = CREATED_INDEX.match(statement.strip())
    return found.group(1) if found else None


def _version(event: StoredEvent) -> int:
    return event.originator_version


def _stored(row: Mapping[str, Any]) -> StoredEvent:
    return StoredEvent(
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )


def reply_columns(replies: Sequence[ReplyRecord]) -> list[list[Any]]:
    """REPLY_COLUMNS' arrays, the body as the JSON text the table keeps."""
    bodies = [orjson.dumps(r.body).decode() for r in replies]
    return [*column_arrays(replies, REPLY_COLUMNS[:-1]), bodies]


def _reply(row: DictRow) -> ReplyRecord:
    return ReplyRecord(
        command_id=row["command_id"],
        kind=row["kind"],
        subject=row["subject"],
        fingerprint=row["fingerprint"],
        body=orjson.loads(row["body"]),
    )
