"""The ledger application: load, decide in memory, save a whole group in one transaction.

Every call to `execute` is a group commit: its commands are applied in order to
aggregates held in memory, and all their events and replies are saved in one
event-store transaction. A single HTTP command is a group of one; a batch is a
group of its items; the group committer joins concurrent requests into one group.

Before a group is judged, one query brings its accounts up to date: the events stored
after the versions held in memory (all of them for an account not held), and the
replies already given to its command ids. Hot accounts stay in memory between groups,
so the cost of a command does not grow with its account's history. If the save still
loses a race (another process wrote an account or a command id in between), nothing was
written: the accounts of the group are dropped from memory and the group is judged
again from the store, a bounded number of times. On the last attempt, the commands on
the accounts that kept changing under it are held back (503, retry) and the rest commit.

The judging itself (`application.decide`) does no I/O; loading and saving go through
the `GroupLoader` and `GroupSaver` ports, which pass the events' index rows and the
replies to the recorder as typed arguments.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import Recording
from eventsourcing.utils import Environment

from application.commands import Outcome, Submission, account_ids, command_id
from application.decide import MoneyCeilings, Terms, decide_group
from application.envelope import index_row
from application.group_store import EventStoreGroups
from application.locks import StripedLocks
from application.ports import (
    GroupLoader,
    GroupRecorder,
    GroupSaver,
    LoadedGroup,
    NoReplyCache,
    ReplyCache,
    ReplyStore,
)
from application.retry import retrying
from domain.account import Account
from domain.errors import AccountNotFound

ACCOUNT_LOCK_STRIPES = 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class LedgerOptions:
    mac_key: bytes
    ceilings: MoneyCeilings
    retries_max: int = 8
    retry_backoff_s: float = 0.01
    # Accounts held in memory between groups (least recently used dropped first).
    accounts_in_memory_max: int = 50_000
    clock: Callable[[], datetime] = utc_now
    reply_cache: ReplyCache = field(default_factory=NoReplyCache)


class Ledger(Application[UUID]):
    """Accounts and the money that moves between them."""

    name = "Ledger"

    def __init__(self, env: Mapping[str, str], options: LedgerOptions) -> None:
        self.options = options
        # Commands of this process on the same accounts take turns, so they do not
        # lose optimistic-concurrency races to each other; other processes may still
        # win one, and then the group is judged again.
        self._locks = StripedLocks(ACCOUNT_LOCK_STRIPES)
        self._accounts = _AccountMemory(options.accounts_in_memory_max)
        super().__init__(env=dict(env))
        groups = EventStoreGroups(self.mapper, cast(GroupRecorder, self.recorder))
        self.loader: GroupLoader = groups
        self.saver: GroupSaver = groups

    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        # Only what infrastructure passed in: a stray POSTGRES_* or CIPHER_KEY
        # variable in the process environment must not change the store.
        return Environment(name, dict(env or {}))

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        # Every `save` (cases, watchlist) takes the group's typed path: the events and
        # their index rows in one transaction. Nothing rides in the library's keyword
        # arguments, and no recordings come back (no follower reads them).
        assert processing_event.tracking is None, "the ledger processes no other log"
        assert not processing_event.saved_kwargs, "typed arguments only"
        events = processing_event.events
        self.saver.save_group(events, [index_row(event) for event in events], ())
        return []

    @property
    def replies(self) -> ReplyStore:
        return cast(ReplyStore, self.recorder)

    # Reads ------------------------------------------------------------------------------

    def get_account(self, account_id: UUID) -> Account:
        """The account as stored now; a copy, so changing it changes nothing held."""
        with self._locks.holding([[account_id]]):
            try:
                account = self._load({account_id}, []).accounts.get(account_id)
            except BaseException:
                self._accounts.drop([account_id])
                raise
            if account is None:
                raise AccountNotFound(f"account {account_id} does not exist")
            self._accounts.put_all([account])
            return deepcopy(account)

    # Writes -----------------------------------------------------------------------------

    def execute_one(self, submission: Submission) -> Outcome:
        outcome = self.execute([submission])[0]
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def execute(self, submissions: Sequence[Submission]) -> list[Outcome]:
        """Apply the commands in order, each atomic on its own; commit all in one go."""
        with self._locks.holding(account_ids(s.command) for s in submissions):
            return self._execute(submissions)

    def _execute(self, submissions: Sequence[Submission]) -> list[Outcome]:
        involved = {i for s in submissions for i in account_ids(s.command)}
        ids = [i for i in (command_id(s.command) for s in submissions) if i is not None]
        contended: set[UUID] = set()
        tried: dict[UUID, int] | None = None

        def attempt(last: bool) -> list[Outcome]:
            nonlocal tried
            loaded = self._load(involved, ids)
            stored = {i: account.version for i, account in loaded.accounts.items()}
            if tried is not None:
                # Accounts another writer moved since our last try: the culprits.
                contended.update(i for i, v in stored.items() if v > tried.get(i, 0))
            tried = stored
            return self._commit(submissions, loaded, held_back=contended if last else set())

        # After a failed attempt nothing of it was written, so what we hold of these
        # accounts may be ahead of the store: the next attempt or group reloads them.
        return retrying(
            attempt,
            retries_max=self.options.retries_max,
            backoff_s=self.options.retry_backoff_s,
            on_failure=lambda: self._accounts.drop(involved),
        )

    def _load(self, account_ids: set[UUID], command_ids: list[UUID]) -> LoadedGroup:
        """The group's accounts, those held in memory brought up to date, and the replies
        already given to its command ids: the reply cache's, and the store's for the ids
        the cache does not know, in the same query as the accounts."""
        held: dict[UUID, Account] = {}
        for account_id in account_ids:
            account = self._accounts.get(account_id)
            if account is not None:
                held[account_id] = account
        cached = self.options.reply_cache.get_many(command_ids) if command_ids else {}
        unknown_ids = [i for i in command_ids if i not in cached]
        loaded = self.loader.load_group(held, account_ids, unknown_ids)
        return LoadedGroup(accounts=loaded.accounts, replies=cached | loaded.replies)

    def _commit(
        self, submissions: Sequence[Submission], loaded: LoadedGroup, held_back: set[UUID]
    ) -> list[Outcome]:
        """Judge the group, save what it decided in one transaction, and keep its
        accounts in memory for the next group."""
        decision = decide_group(
            submissions,
            loaded.accounts,
            loaded.replies,
            terms=Terms(ceilings=self.options.ceilings, mac_key=self.options.mac_key),
            # Drawn from the clock one command at a time, as each reaches the domain.
            timestamps=iter(self.options.clock, None),
            held_back=held_back,
        )
        if decision.events:
            events = [event for events in decision.events.values() for event in events]
            replies = list(decision.replies.values())
            self.saver.save_group(events, [index_row(event) for event in events], replies)
            self.options.reply_cache.put_many(decision.replies)
        self._accounts.put_all(decision.accounts.values())
        return decision.outcomes


class _AccountMemory:
    """Accounts held between groups, least recently used dropped first: the process's
    one cache of aggregates (the library's repository keeps none, so cases and watchlist
    entries are read from the store). Only callers holding an account's lock touch it;
    a group that fails drops what it touched."""

    def __init__(self, size_max: int) -> None:
        assert size_max > 0
        self._size_max = size_max
        self._accounts: OrderedDict[UUID, Account] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, account_id: UUID) -> Account | None:
        with self._lock:
            account = self._accounts.get(account_id)
            if account is not None:
                self._accounts.move_to_end(account_id)
            return account

    def put_all(self, accounts: Iterable[Account]) -> None:
        with self._lock:
            for account in accounts:
                self._accounts[account.id] = account
                self._accounts.move_to_end(account.id)
            while len(self._accounts) > self._size_max:
                self._accounts.popitem(last=False)

    def drop(self, account_ids: Iterable[UUID]) -> None:
        with self._lock:
            for account_id in account_ids:
                self._accounts.pop(account_id, None)
