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
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import Recording
from eventsourcing.utils import Environment

from application.commands import (
    ChangeStatus,
    Deposit,
    OpenAccount,
    Outcome,
    ReplyRecord,
    Submission,
    Transfer,
    Withdraw,
    account_body,
    account_ids,
    command_id,
    fingerprint,
    movement_body,
    transfer_body,
)
from application.envelope import index_row
from application.locks import StripedLocks
from application.ports import NoReplyCache, ReplyCache, ReplyStore
from application.retry import retrying
from domain.account import Account, transfer
from domain.errors import (
    AccountNotFound,
    DomainError,
    Forbidden,
    TransactionConflict,
    Unavailable,
)
from domain.integrity import Stamp
from domain.money import format_amount, minor_units

ACCOUNT_LOCK_STRIPES = 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class MoneyCeilings:
    """The operator's ceilings in major units of any currency (from the settings). The
    domain reads no settings: each command gets them as arguments, in minor units."""

    balance_max_major: int
    overdraft_max_major: int
    teller_overdraft_max_major: int

    def __post_init__(self) -> None:
        assert self.balance_max_major > 0, self.balance_max_major
        assert 0 <= self.teller_overdraft_max_major <= self.overdraft_max_major

    def balance_max_minor(self, currency: str) -> int:
        return minor_units(self.balance_max_major, currency)

    def overdraft_max_minor(self, currency: str) -> int:
        return minor_units(self.overdraft_max_major, currency)

    def teller_overdraft_max_minor(self, currency: str) -> int:
        return minor_units(self.teller_overdraft_max_major, currency)


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

    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        # Only what infrastructure passed in: a stray POSTGRES_* or CIPHER_KEY
        # variable in the process environment must not change the store.
        return Environment(name, dict(env or {}))

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        # Every save (ledger, cases, watchlist) writes the event index in the events'
        # own transaction: the recorder inserts these rows right after the events.
        processing_event.saved_kwargs["index_rows"] = [
            index_row(event) for event in processing_event.events
        ]
        return super()._record(processing_event)

    def save_group(self, accounts: Iterable[Account], replies: list[ReplyRecord]) -> None:
        """`save` for the group commit: the same recording (events, index rows, replies in
        one transaction), without the library's per-object protocol checks, snapshots
        (none are configured) or notifications to followers (there are none)."""
        processing_event = ProcessingEvent[UUID]()
        for account in accounts:
            processing_event.events.extend(account.collect_events())
            processing_event.aggregates[account.id] = account
        processing_event.saved_kwargs["replies"] = replies
        self._record(processing_event)

    @property
    def replies(self) -> ReplyStore:
        return cast(ReplyStore, self.recorder)

    # Reads ------------------------------------------------------------------------------

    def get_account(self, account_id: UUID) -> Account:
        try:
            aggregate: object = self.repository.get(account_id)
        except AggregateNotFoundError:
            raise AccountNotFound(f"account {account_id} does not exist") from None
        if not isinstance(aggregate, Account):
            raise AccountNotFound(f"account {account_id} does not exist")
        return aggregate

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
        contended: set[UUID] = set()
        tried: dict[UUID, int] | None = None

        def attempt(last: bool) -> list[Outcome]:
            nonlocal tried
            group = _Group(self)
            stored = group.load(involved, submissions)
            if tried is not None:
                # Accounts another writer moved since our last try: the culprits.
                contended.update(i for i, v in stored.items() if v > tried.get(i, 0))
            tried = stored
            return group.commit(submissions, held_back=contended if last else set())

        # After a failed attempt nothing of it was written, so what we hold of these
        # accounts may be ahead of the store: the next attempt or group reloads them.
        return retrying(
            attempt,
            retries_max=self.options.retries_max,
            backoff_s=self.options.retry_backoff_s,
            on_failure=lambda: self._accounts.drop(involved),
        )

    def _stored_replies(self, ids: list[UUID]) -> tuple[dict[UUID, ReplyRecord], list[UUID]]:
        """Replies the cache has, and the ids it does not know (for the store to answer)."""
        if not ids:
            return {}, []
        found = self.options.reply_cache.get_many(ids)
        return found, [i for i in ids if i not in found]


class _AccountMemory:
    """Accounts held between groups, least recently used dropped first. Only groups
    holding an account's lock touch it; a group that fails drops what it touched."""

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


class _Group:
    """One attempt at a group: aggregates in memory, replies decided so far."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.loaded: dict[UUID, Account] = {}
        self.touched: dict[UUID, Account] = {}
        self.stored: dict[UUID, ReplyRecord] = {}
        self.new_replies: dict[UUID, ReplyRecord] = {}

    def load(self, account_ids: set[UUID], submissions: Sequence[Submission]) -> dict[UUID, int]:
        """Bring the group's accounts and replies up to date with one query; returns the
        stored version of each account found."""
        memory = self.ledger._accounts
        held: dict[UUID, Account] = {}
        for account_id in account_ids:
            account = memory.get(account_id)
            if account is not None:
                held[account_id] = account
        ids = [i for i in (command_id(s.command) for s in submissions) if i is not None]
        self.stored, unknown_ids = self.ledger._stored_replies(ids)
        state = self.ledger.replies.select_group_state(
            {i: held[i].version if i in held else 0 for i in account_ids}, unknown_ids
        )
        self.stored |= state.replies
        aggregates: dict[UUID, Any] = dict(held)
        for stored_event in state.events:
            event: Any = self.ledger.mapper.to_domain_event(stored_event)
            aggregate_id = stored_event.originator_id
            assert isinstance(aggregate_id, UUID)
            aggregates[aggregate_id] = event.mutate(aggregates.get(aggregate_id))
        for aggregate_id, aggregate in aggregates.items():
            # An id that names a case or a watchlist entry is no account.
            if isinstance(aggregate, Account):
                self.loaded[aggregate_id] = aggregate
        return {i: account.version for i, account in self.loaded.items()}

    def commit(self, submissions: Sequence[Submission], held_back: set[UUID]) -> list[Outcome]:
        outcomes = [
            Outcome(error=Unavailable("its accounts kept changing under it; retry"))
            if held_back.intersection(account_ids(submission.command))
            else self.decide(submission)
            for submission in submissions
        ]
        if self.touched:
            self.ledger.save_group(self.touched.values(), list(self.new_replies.values()))
            self.ledger.options.reply_cache.put_many(self.new_replies)
        self.ledger._accounts.put_all(self.loaded.values())
        return outcomes

    def account(self, account_id: UUID) -> Account:
        account = self.loaded.get(account_id)
        if account is None:
            raise AccountNotFound(f"account {account_id} does not exist")
        return account

    def decide(self, submission: Submission) -> Outcome:
        try:
            return self._decide(submission)
        except DomainError as error:
            return Outcome(error=error)

    def _decide(self, submission: Submission) -> Outcome:
        # Auth first: a teller of another branch learns nothing, not even a replay.
        self._check_authority(submission)
        cid = command_id(submission.command)
        if cid is None:
            return Outcome(body=self._apply(submission, None))
        print_ = fingerprint(submission)
        prior = self.new_replies.get(cid) or self.stored.get(cid)
        if prior is not None:
            if prior.fingerprint != print_:
                raise TransactionConflict(f"id {cid} was already used for another command")
            return Outcome(body=prior.body, replayed=True)
        body = self._apply(submission, cid)
        self.new_replies[cid] = ReplyRecord(
            command_id=cid,
            kind=submission.command.kind,
            subject=submission.actor.subject,
            fingerprint=print_,
            body=body,
        )
        return Outcome(body=body)

    def _check_authority(self, submission: Submission) -> None:
        """A teller acts on its own branch only, and grants overdrafts up to its ceiling."""
        scope = submission.branch_scope
        if scope is None:
            return
        command = submission.command
        match command:
            case OpenAccount(branch=branch):
                pass
            case Transfer(from_account_id=source_id):
                branch = self.account(source_id).branch
            case (
                Deposit(account_id=account_id)
                | Withdraw(account_id=account_id)
                | ChangeStatus(account_id=account_id)
            ):
                branch = self.account(account_id).branch
        if branch != scope:
            raise Forbidden(f"branch {scope} may not act on branch {branch}")
        if isinstance(command, OpenAccount):
            limit_minor = self.ledger.options.ceilings.teller_overdraft_max_minor(command.currency)
            if command.overdraft_limit_minor > limit_minor:
                raise Forbidden(
                    f"a teller may grant an overdraft of at most "
                    f"{format_amount(limit_minor, command.currency)} {command.currency}; "
                    "an admin may grant more"
                )

    def _apply(self, submission: Submission, cid: UUID | None) -> dict[str, Any]:
        # An opening moves no money: its id is the account's, not a transaction's.
        is_transaction = cid is not None and not isinstance(submission.command, OpenAccount)
        stamp = Stamp(
            actor=submission.actor,
            timestamp=self.ledger.options.clock(),
            correlation_id=submission.correlation_id,
            transaction_id=str(cid) if is_transaction else None,
            mac_key=self.ledger.options.mac_key,
        )
        command = submission.command
        ceilings = self.ledger.options.ceilings
        match command:
            case OpenAccount():
                return self._open(command, stamp)
            case Deposit():
                account = self.account(command.account_id)
                account.deposit(
                    command.money,
                    command.channel,
                    command.reference,
                    stamp,
                    balance_max_minor=ceilings.balance_max_minor(account.currency),
                )
                self.touched[account.id] = account
                return movement_body(command.transaction_id, account)
            case Withdraw():
                account = self.account(command.account_id)
                account.withdraw(command.money, command.channel, command.reference, stamp)
                self.touched[account.id] = account
                return movement_body(command.transaction_id, account)
            case Transfer():
                source = self.account(command.from_account_id)
                target = self.account(command.to_account_id)
                transfer(
                    source,
                    target,
                    command.money,
                    command.reference,
                    stamp,
                    balance_max_minor=ceilings.balance_max_minor(target.currency),
                )
                self.touched[source.id] = source
                self.touched[target.id] = target
                return transfer_body(command.transaction_id, source, target)
            case ChangeStatus():
                account = self.account(command.account_id)
                getattr(account, command.action)(command.reason, stamp)
                self.touched[account.id] = account
                return account_body(account)

    def _open(self, command: OpenAccount, stamp: Stamp) -> dict[str, Any]:
        if command.account_id in self.loaded:
            # Stored without a reply under its id (never by this service): not ours to reopen.
            raise TransactionConflict(f"account {command.account_id} already exists")
        account = Account.open(
            command.account_id,
            command.owner,
            command.branch,
            command.currency,
            command.overdraft_limit_minor,
            stamp,
            overdraft_max_minor=self.ledger.options.ceilings.overdraft_max_minor(command.currency),
        )
        # A new account exists for later items of this group, and a second
        # opening under the same id loses on the primary key, as it should.
        self.loaded[account.id] = account
        self.touched[account.id] = account
        return account_body(account)
