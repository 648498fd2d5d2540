"""The ledger application: load, decide in memory, save a whole group in one transaction.

Every call to `execute` is a group commit: its commands are applied in order to
aggregates held in memory, and all their events and replies are saved in one
event-store transaction. A single HTTP command is a group of one; a batch is a
group of its items. If the save loses a race (another writer took a version or
a command id), nothing was written: the whole group is judged again from fresh
state, a bounded number of times.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
    Recording,
)
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
from domain.account import Account, transfer
from domain.errors import (
    AccountNotFound,
    DomainError,
    Forbidden,
    TransactionConflict,
    Unavailable,
)
from domain.integrity import Stamp

ACCOUNT_LOCK_STRIPES = 1024
RETRY_BACKOFF_S_MAX = 0.25


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class LedgerOptions:
    mac_key: bytes
    retries_max: int = 8
    retry_backoff_s: float = 0.01
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
        for attempt in range(self.options.retries_max):
            try:
                return self._attempt(submissions)
            except IntegrityError:
                # Another writer took a version or a command id first. Nothing of
                # ours was written; judge the whole group again from fresh state.
                backoff_s = min(self.options.retry_backoff_s * 2**attempt, RETRY_BACKOFF_S_MAX)
                time.sleep(backoff_s * (0.5 + random.random()))
            except (OperationalError, InterfaceError) as error:
                raise Unavailable(f"event store unreachable: {type(error).__name__}") from error
            except PersistenceError as error:
                raise Unavailable(f"event store refused the write: {error}") from error
        raise Unavailable(f"gave up after {self.options.retries_max} conflicting attempts")

    def _attempt(self, submissions: Sequence[Submission]) -> list[Outcome]:
        group = _Group(self)
        ids = [i for i in (command_id(s.command) for s in submissions) if i is not None]
        group.stored = self._stored_replies(ids)
        outcomes = [group.decide(submission) for submission in submissions]
        if group.touched:
            self.save(*group.touched.values(), replies=list(group.new_replies.values()))
            self.options.reply_cache.put_many(group.new_replies)
        return outcomes

    def _stored_replies(self, ids: list[UUID]) -> dict[UUID, ReplyRecord]:
        if not ids:
            return {}
        found = self.options.reply_cache.get_many(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            found |= self.replies.select_replies(missing)
        return found


class _Group:
    """One attempt at a group: aggregates in memory, replies decided so far."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.loaded: dict[UUID, Account] = {}
        self.touched: dict[UUID, Account] = {}
        self.stored: dict[UUID, ReplyRecord] = {}
        self.new_replies: dict[UUID, ReplyRecord] = {}

    def account(self, account_id: UUID) -> Account:
        if account_id not in self.loaded:
            self.loaded[account_id] = self.ledger.get_account(account_id)
        return self.loaded[account_id]

    def decide(self, submission: Submission) -> Outcome:
        try:
            return self._decide(submission)
        except DomainError as error:
            return Outcome(error=error)

    def _decide(self, submission: Submission) -> Outcome:
        # Auth first: a teller of another branch learns nothing, not even a replay.
        self._check_branch(submission)
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

    def _check_branch(self, submission: Submission) -> None:
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
        match command:
            case OpenAccount():
                return self._open(command, stamp)
            case Deposit():
                account = self.account(command.account_id)
                account.deposit(command.money, command.channel, command.reference, stamp)
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
                transfer(source, target, command.money, command.reference, stamp)
                self.touched[source.id] = source
                self.touched[target.id] = target
                return transfer_body(command.transaction_id, source, target)
            case ChangeStatus():
                account = self.account(command.account_id)
                getattr(account, command.action)(command.reason, stamp)
                self.touched[account.id] = account
                return account_body(account)

    def _open(self, command: OpenAccount, stamp: Stamp) -> dict[str, Any]:
        account = Account.open(
            command.account_id,
            command.owner,
            command.branch,
            command.currency,
            command.overdraft_limit_minor,
            stamp,
        )
        # A new account exists for later items of this group, and a second
        # opening under the same id loses on the primary key, as it should.
        self.loaded[account.id] = account
        self.touched[account.id] = account
        return account_body(account)
