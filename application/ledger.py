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
from eventsourcing.persistence import PersistenceError, Recording
from eventsourcing.utils import Environment

from application.commands import (
    Outcome,
    ReplyRecord,
    Submission,
    account_ids,
    command_id,
    other_ids,
)
from application.decide import Decision, decide_group
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
from application.retry import lost_race, retrying, unavailable
from application.terms import MoneyCeilings, Terms
from domain.account import Account
from domain.errors import AccountNotFound
from domain.integrity import DEFAULT_MAC_KID
from domain.screening import Screening

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
    # Serves the look-ups of committed replies (holds, reversals); commands read the store.
    reply_cache: ReplyCache = field(default_factory=NoReplyCache)
    # The id of `mac_key`, recorded in every event it seals (keys rotate).
    mac_kid: str = DEFAULT_MAC_KID
    # Screening in the money path (the rules file's `[screening]`); None: none.
    screening: Screening | None = None


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
        self._ahead = _DecidedAhead()
        self.groups_judged_again = 0
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
                account = self._load((), {account_id}, []).accounts.get(account_id)
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
            loaded = self._load(submissions, involved, ids)
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

    def _load(
        self,
        submissions: Sequence[Submission],
        account_ids: set[UUID],
        command_ids: list[UUID],
        ahead: tuple[dict[UUID, Account], dict[UUID, ReplyRecord]] = ({}, {}),
    ) -> LoadedGroup:
        """The group's accounts, those held in memory brought up to date, and the replies
        already given to its command ids, from the store in the same query as the
        accounts. `ahead`: the accounts and replies of groups decided but still being
        written, which come first."""
        ahead_accounts, ahead_replies = ahead
        others = self._other_ids(submissions)
        held: dict[UUID, Account] = {}
        for account_id in account_ids:
            account = ahead_accounts.get(account_id)
            if account is None:
                account = self._accounts.get(account_id)
            if account is not None:
                held[account_id] = account
        known = {i: ahead_replies[i] for i in command_ids if i in ahead_replies}
        unknown_ids = [i for i in command_ids if i not in known]
        # No reply cache here: the store's query brings the accounts up to date anyway,
        # and reads the replies in the same round trip (the cache serves look-ups).
        loaded = self.loader.load_group(held, account_ids | others, unknown_ids)
        return LoadedGroup(
            accounts=loaded.accounts,
            replies=known | loaded.replies,
            others=loaded.others,
        )

    def _other_ids(self, submissions: Sequence[Submission]) -> set[UUID]:
        screening = self.options.screening
        watchlist = screening is not None and screening.checks_watchlist
        return {i for s in submissions for i in other_ids(s.command, watchlist=watchlist)}

    def _commit(
        self, submissions: Sequence[Submission], loaded: LoadedGroup, held_back: set[UUID]
    ) -> list[Outcome]:
        """Judge the group, save what it decided in one transaction, and keep its
        accounts in memory for the next group."""
        decision = self._decide(submissions, loaded, held_back)
        self._save(decision)
        self._accounts.put_all(decision.accounts.values())
        return decision.outcomes

    def _decide(
        self, submissions: Sequence[Submission], loaded: LoadedGroup, held_back: set[UUID]
    ) -> Decision:
        return decide_group(
            submissions,
            loaded.accounts,
            loaded.replies,
            terms=Terms(
                ceilings=self.options.ceilings,
                mac_key=self.options.mac_key,
                mac_kid=self.options.mac_kid,
                screening=self.options.screening,
            ),
            others=loaded.others,
            # Drawn from the clock one command at a time, as each reaches the domain.
            timestamps=iter(self.options.clock, None),
            held_back=held_back,
        )

    def _save(self, decision: Decision) -> None:
        if decision.events:
            events = [event for events in decision.events.values() for event in events]
            replies = list(decision.replies.values())
            self.saver.save_group(events, [index_row(event) for event in events], replies)

    # The commit pipeline ----------------------------------------------------------------
    #
    # The group committer judges the next group while the previous one is being written:
    # one thread calls `decide_ahead`, another `write_decided`, in the same order. A group
    # decided ahead is judged on top of the accounts and replies of the groups still being
    # written before it (`_DecidedAhead`), so its events follow theirs. If any write
    # fails, nothing decided on top of it may be written: the generation moves on, every
    # group decided in an older one is judged again from the store when its turn to be
    # written comes, and whatever memory held of their accounts is dropped.
    #
    # Locks: the pipeline holds the stripes of every group in it, from its judging until
    # its write. A group whose stripes are already the pipeline's shares them; the others
    # it takes all at once without waiting. If another thread holds one of them, the
    # judging thread gives back what it took, waits for the pipeline to empty (`drained`)
    # and only then waits for the locks, holding none: no thread ever waits for a lock
    # while holding another out of order, and the writing thread never waits for one.

    def decide_ahead(
        self, submissions: Sequence[Submission], drained: Callable[[], None]
    ) -> DecidedGroup:
        """Judge a group on top of the groups decided before it and not yet written."""
        involved = {i for s in submissions for i in account_ids(s.command)}
        stripes = self._locks.stripes([involved])
        self._take_stripes(stripes, drained)
        ids = [i for i in (command_id(s.command) for s in submissions) if i is not None]
        generation, ahead = self._ahead.snapshot(involved, ids)
        try:
            loaded = self._load(submissions, involved, ids, ahead)
            decision = self._decide(submissions, loaded, held_back=set())
        except BaseException:
            # What it changed in place may be ahead of the store; nothing of it is kept.
            self._ahead.void(self._accounts, involved)
            return DecidedGroup(submissions, involved, stripes, generation, None)
        group = DecidedGroup(submissions, involved, stripes, generation, decision)
        self._ahead.add(self._accounts, group)
        return group

    def write_decided(self, group: DecidedGroup) -> list[Outcome]:
        """Write a group decided ahead, or judge it again from the store if what it was
        decided on did not make it there; in both cases give back its stripes."""
        try:
            return self._write_decided(group)
        finally:
            self._give_stripes(group.stripes)

    def _write_decided(self, group: DecidedGroup) -> list[Outcome]:
        decision = group.decision
        if decision is None or not self._ahead.current(group):
            self.groups_judged_again += 1
            self._accounts.drop(group.involved)
            return self._execute(group.submissions)
        try:
            self._save(decision)
        except BaseException as error:
            self._ahead.void(self._accounts, group.involved)
            if lost_race(error):  # nothing was written: judge it again, as always
                self.groups_judged_again += 1
                return self._execute(group.submissions)
            if isinstance(error, PersistenceError):
                raise unavailable(error) from error
            raise
        self._ahead.written(self._accounts, group)
        return decision.outcomes

    def _take_stripes(self, stripes: list[int], drained: Callable[[], None]) -> None:
        with self._ahead.mutex:
            new = [s for s in stripes if s not in self._ahead.stripes]
            if self._locks.try_acquire(new):
                self._ahead.hold(stripes)
                return
        drained()  # the pipeline now holds no stripe, and neither does this thread
        with self._ahead.mutex:
            assert not self._ahead.stripes, "a drained pipeline holds no stripe"
        self._locks.acquire(stripes)
        with self._ahead.mutex:
            self._ahead.hold(stripes)

    def _give_stripes(self, stripes: list[int]) -> None:
        with self._ahead.mutex:
            self._locks.release(self._ahead.let_go(stripes))


@dataclass
class DecidedGroup:
    """A group judged ahead of its write: what the pipeline hands from judging to writing.
    `decision` is None when the judging failed (the group is then judged again in turn)."""

    submissions: Sequence[Submission]
    involved: set[UUID]
    stripes: list[int]
    generation: int
    decision: Decision | None


class _DecidedAhead:
    """The accounts and replies of groups decided and not yet written, newest first in
    line; the generation, which moves on whenever something decided cannot be written;
    and how many groups in the pipeline hold each lock stripe. All under `mutex`."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.generation = 0
        self.accounts: dict[UUID, tuple[Account, DecidedGroup]] = {}
        self.replies: dict[UUID, tuple[ReplyRecord, DecidedGroup]] = {}
        self.stripes: dict[int, int] = {}

    def hold(self, stripes: list[int]) -> None:
        for stripe in stripes:
            self.stripes[stripe] = self.stripes.get(stripe, 0) + 1

    def let_go(self, stripes: list[int]) -> list[int]:
        """The stripes no group in the pipeline holds any more: to be released."""
        free = []
        for stripe in stripes:
            self.stripes[stripe] -= 1
            if not self.stripes[stripe]:
                del self.stripes[stripe]
                free.append(stripe)
        return free

    def snapshot(
        self, account_ids: set[UUID], command_ids: list[UUID]
    ) -> tuple[int, tuple[dict[UUID, Account], dict[UUID, ReplyRecord]]]:
        with self.mutex:
            accounts = {i: self.accounts[i][0] for i in account_ids if i in self.accounts}
            replies = {i: self.replies[i][0] for i in command_ids if i in self.replies}
            return self.generation, (accounts, replies)

    def add(self, memory: _AccountMemory, group: DecidedGroup) -> None:
        assert group.decision is not None
        with self.mutex:
            if group.generation != self.generation:
                # Decided on what failed meanwhile: it will be judged again, and what it
                # changed in place must not be judged on before then.
                memory.drop(group.involved)
                return
            for account in group.decision.accounts.values():
                self.accounts[account.id] = (account, group)
            for command_id_, reply in group.decision.replies.items():
                self.replies[command_id_] = (reply, group)

    def current(self, group: DecidedGroup) -> bool:
        with self.mutex:
            return group.generation == self.generation

    def written(self, memory: _AccountMemory, group: DecidedGroup) -> None:
        """Its accounts are in the store now: memory holds them, the layer lets them go
        unless a later group decided on them."""
        assert group.decision is not None
        with self.mutex:
            memory.put_all(group.decision.accounts.values())
            for account_id in group.decision.accounts:
                if self.accounts.get(account_id, (None, None))[1] is group:
                    del self.accounts[account_id]
            for command_id_ in group.decision.replies:
                if self.replies.get(command_id_, (None, None))[1] is group:
                    del self.replies[command_id_]

    def void(self, memory: _AccountMemory, involved: set[UUID]) -> None:
        """Something decided cannot be written: every group decided until now is judged
        again, and neither memory nor the layer keeps what they changed in place."""
        with self.mutex:
            self.generation += 1
            memory.drop(set(self.accounts) | involved)
            self.accounts.clear()
            self.replies.clear()


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
