"""Expected refusals. Each carries the stable `code` clients see (the API contract's table)."""

from __future__ import annotations


class DomainError(Exception):
    """A command the rules refuse. Nothing was changed."""

    code = "domain_error"
    title = "Refused"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ValidationFailed(DomainError):
    code = "validation_error"
    title = "Invalid request"

    def __init__(self, detail: str, field: str = "body") -> None:
        super().__init__(detail)
        # The contract's `errors` list: which field, and what is wrong with it.
        self.errors = [{"field": field, "message": detail}]


class InvalidAmount(DomainError):
    code = "invalid_amount"
    title = "Invalid amount"


class UnknownCurrency(DomainError):
    code = "unknown_currency"
    title = "Unknown currency"


class CurrencyMismatch(DomainError):
    code = "currency_mismatch"
    title = "Currency mismatch"


class AccountNotFound(DomainError):
    code = "account_not_found"
    title = "Account not found"


class InsufficientFunds(DomainError):
    code = "insufficient_funds"
    title = "Insufficient funds"


class BalanceLimitExceeded(DomainError):
    """A credit that would take a balance above the operator's ceiling (`BALANCE_MAX`)."""

    code = "balance_limit_exceeded"
    title = "Balance limit exceeded"


class AccountFrozen(DomainError):
    code = "account_frozen"
    title = "Account frozen"


class AccountClosed(DomainError):
    code = "account_closed"
    title = "Account closed"


class AccountNotFrozen(DomainError):
    code = "account_not_frozen"
    title = "Account not frozen"


class AccountNotEmpty(DomainError):
    code = "account_not_empty"
    title = "Account not empty"


class TransactionConflict(DomainError):
    code = "transaction_conflict"
    title = "Transaction id already used for another command"


class Forbidden(DomainError):
    code = "forbidden"
    title = "Forbidden"


class EventUnreadable(DomainError):
    """Not a refusal: the store holds an event this server cannot decode (a type it does not
    know, state it cannot decrypt or parse), so what needs that event cannot be computed.
    `vigil audit verify` reports every such event."""

    code = "event_unreadable"
    title = "Stored event unreadable"

    @classmethod
    def of(cls, where: str, error: BaseException, consequence: str) -> EventUnreadable:
        """The one wording: which event (`where`), why, and what it stops (`consequence`)."""
        return cls(
            f"the stored event at {where} cannot be decoded ({type(error).__name__}), "
            f"{consequence}; `vigil audit verify` reports every such event"
        )


class Unavailable(DomainError):
    """Not a refusal by the rules: the store could not take the command now. Retry."""

    code = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class CaseNotFound(DomainError):
    code = "case_not_found"
    title = "Case not found"


class InvalidTransition(DomainError):
    """The case's workflow does not allow this action in its present state."""

    code = "invalid_transition"
    title = "Invalid case transition"


class AlreadyListed(DomainError):
    code = "already_listed"
    title = "Account already on the watchlist"


class WatchlistEntryNotFound(DomainError):
    code = "watchlist_entry_not_found"
    title = "Account not on the watchlist"


class HoldNotFound(DomainError):
    code = "hold_not_found"
    title = "Hold not found"


class TransactionNotFound(DomainError):
    code = "transaction_not_found"
    title = "Transaction not found"


class HoldNotPending(DomainError):
    """Capture or void of a hold already captured, voided or expired."""

    code = "hold_not_pending"
    title = "Hold not pending"


class HoldExpired(DomainError):
    """Capture of a pending hold past its `expires_at` (before the sweep expired it)."""

    code = "hold_expired"
    title = "Hold expired"


class HoldUnderReview(DomainError):
    """Capture or void of a hold compliance holds for review: only release or reject may."""

    code = "hold_under_review"
    title = "Hold under compliance review"


class AccountHasHolds(DomainError):
    code = "account_has_holds"
    title = "Account has pending holds"


class ReversalExceedsOriginal(DomainError):
    code = "reversal_exceeds_original"
    title = "Reversal exceeds the original"


class NotReversible(DomainError):
    code = "not_reversible"
    title = "Transaction not reversible"


class SuppressionNotFound(DomainError):
    code = "suppression_not_found"
    title = "Suppression not found"


class CaseAlreadyAssigned(DomainError):
    code = "case_already_assigned"
    title = "Case already assigned"
