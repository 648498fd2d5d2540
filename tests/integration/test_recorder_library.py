"""VigilRecorder passes the eventsourcing library's own application-recorder test cases:
without index rows or replies it records exactly as the library's PostgreSQL recorder
does, so it can stand wherever that recorder stands.

Each test gets an empty database of its own (the cases count notification ids from 1),
created and dropped here. The library's concurrency cases write about 10,000 events from
ten threads while two others read: a second or two.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit
from uuid import uuid4

import pytest
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.tests import persistence as library_cases

from infrastructure.eventstore.recorder import VigilRecorder
from tests.conftest import RUN_ID, _admin_execute, database_url

pytestmark = pytest.mark.integration


class OwnDatabase(library_cases.RecorderTestCase):
    """A fresh, empty database for each test, dropped after it, and a datastore on it
    configured as the library's own PostgreSQL tests configure theirs."""

    def setUp(self) -> None:
        super().setUp()
        self.database = f"vigil_t{RUN_ID}_lib_{uuid4().hex[:8]}"
        _admin_execute(f'CREATE DATABASE "{self.database}"')
        url = urlsplit(database_url(self.database))
        self.datastore = PostgresDatastore(
            dbname=self.database,
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=unquote(url.username or "postgres"),
            password=unquote(url.password or ""),
        )

    def tearDown(self) -> None:
        self.datastore.close()
        _admin_execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        super().tearDown()

    def create_recorder(self) -> VigilRecorder:
        recorder = VigilRecorder(self.datastore)
        recorder.create_table()
        return recorder


class TestVigilRecorderAsApplicationRecorder(
    OwnDatabase, library_cases.ApplicationRecorderTestCase[VigilRecorder]
):
    def test_concurrent_throughput(self) -> None:
        # As the library's own PostgreSQL case does: one connection per worker.
        self.datastore.pool.pool_size = 4
        super().test_concurrent_throughput()


class TestVigilRecorderNotificationIdsDoNotInterleave(
    OwnDatabase, library_cases.NonInterleavingNotificationIDsBaseCase
):
    insert_num = 1_000
