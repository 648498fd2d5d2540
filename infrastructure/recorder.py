"""Vigil's event-store recorder: the library's PostgreSQL recorder plus the command
replies table, written in the same transaction as the events it answers for."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from application.commands import ReplyRecord
from application.envelope import IndexRow
from infrastructure.event_index import (
    INDEX_TABLE,
    append_only_statements,
    index_columns,
    index_create_statements,
    index_insert_statement,
)

REPLIES_TABLE = "command_replies"


class VigilRecorder(PostgresApplicationRecorder):
    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
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
        self.insert_replies_statement = SQL(
            "INSERT INTO {schema}.{replies} (command_id, kind, subject, fingerprint, body) "
            "VALUES (%s, %s, %s, %s, %s)"
        ).format(schema=schema, replies=replies)
        # The event index, and the append-only guards on all three tables: part of every
        # migration of the store, so no store exists without them.
        self.sql_create_statements.extend(index_create_statements(self.datastore.schema))
        self.sql_create_statements.extend(
            append_only_statements(
                self.datastore.schema, [self.events_table_name, REPLIES_TABLE, INDEX_TABLE]
            )
        )
        self.insert_index_statement = index_insert_statement(
            self.datastore.schema, self.events_table_name
        )
        self.select_replies_statement = SQL(
            "SELECT command_id, kind, subject, fingerprint, body FROM {schema}.{replies} "
            "WHERE command_id = ANY(%s)"
        ).format(schema=schema, replies=replies)

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # Events first (this takes the table lock), replies after: every writer
        # takes its locks in the same order, so two writers of one id cannot deadlock.
        # The nested pipeline syncs on exit, so a unique violation on the events (a
        # lost optimistic-concurrency race) surfaces here as an IntegrityError, not as
        # "pipeline aborted" on the replies insert that would follow it.
        with curs.connection.pipeline():
            super()._insert_stored_events(curs, stored_events, **kwargs)
        replies: Sequence[ReplyRecord] = kwargs.get("replies") or ()
        if replies:
            with curs.connection.cursor() as replies_cursor:
                replies_cursor.executemany(
                    self.insert_replies_statement,
                    [
                        (
                            r.command_id,
                            r.kind,
                            r.subject,
                            r.fingerprint,
                            orjson.dumps(r.body).decode(),
                        )
                        for r in replies
                    ],
                )
        # Last, and still in the events' transaction and pipeline: one row per event,
        # its notification id joined from the rows just inserted (no extra round trip).
        index_rows: Sequence[IndexRow] = kwargs.get("index_rows") or ()
        if index_rows:
            assert len(index_rows) == len(stored_events), "one index row per stored event"
            with curs.connection.cursor() as index_cursor:
                index_cursor.execute(self.insert_index_statement, index_columns(index_rows))

    def select_replies(self, command_ids: Iterable[UUID]) -> dict[UUID, ReplyRecord]:
        ids = list(command_ids)
        if not ids:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.select_replies_statement, (ids,), prepare=True)
            return {
                row["command_id"]: ReplyRecord(
                    command_id=row["command_id"],
                    kind=row["kind"],
                    subject=row["subject"],
                    fingerprint=row["fingerprint"],
                    body=orjson.loads(row["body"]),
                )
                for row in curs.fetchall()
            }
