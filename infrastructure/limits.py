"""Fixed bounds that must relate to one another, and the assertions that they do: money,
Kafka's byte sizes, and how long a stopping process is given.

The ceilings an operator tunes (`AMOUNT_MAX`, `OVERDRAFT_MAX`, `TELLER_OVERDRAFT_MAX`,
`BALANCE_MAX`, all in major units) live in `Settings`, whose validation calls
`check_money_ceilings`: a combination that cannot work refuses to start, naming the
variables to change, rather than failing later in a projection.
"""

from __future__ import annotations

from typing import Final

from domain.money import CURRENCY_EXPONENTS

# PostgreSQL bigint: the read models keep balances, limits and amounts in it.
BIGINT_MAX: Final = 2**63 - 1
# The currency with the most decimal places turns a ceiling into the most minor units.
CURRENCY_EXPONENT_MAX: Final = max(CURRENCY_EXPONENTS.values())
# Room to spare below bigint: a reader may add a few of these figures together
# (available = balance + overdraft; a balance plus the credit being judged), and a
# currency with more decimal places may be added. A factor of 1,000 covers both.
HEADROOM_FACTOR: Final = 1_000
# The widest balance range, in minor units, that the ceilings may allow.
BALANCE_RANGE_MINOR_MAX: Final = BIGINT_MAX // HEADROOM_FACTOR

assert CURRENCY_EXPONENT_MAX >= 0
assert BALANCE_RANGE_MINOR_MAX * HEADROOM_FACTOR <= BIGINT_MAX
# Sums (KPIs) are unbounded over time: they are `numeric` columns, never bigint.


# Kafka, in bytes. A producer batch (per partition) fits in one request (the broker's
# default message.max.bytes); a consumer's fetch from one partition holds whole producer
# batches; a fetch over every partition holds a partition's fetch. Envelopes are ~1 KiB.
PRODUCER_BATCH_BYTES_MAX: Final = 256 * 1024
PRODUCER_REQUEST_BYTES_MAX: Final = 1_048_576
FETCH_PARTITION_BYTES_MAX: Final = 512 * 1024
FETCH_BYTES_MAX: Final = 32 * 1024 * 1024

assert PRODUCER_BATCH_BYTES_MAX <= PRODUCER_REQUEST_BYTES_MAX
assert PRODUCER_BATCH_BYTES_MAX <= FETCH_PARTITION_BYTES_MAX
assert FETCH_PARTITION_BYTES_MAX <= FETCH_BYTES_MAX

# An API given the signal to stop drains its requests for up to this long (uvicorn's
# graceful shutdown); `vigil up` waits at least as long before it kills the child.
API_DRAIN_S: Final = 10
CHILD_STOP_TIMEOUT_S: Final = 10.0

assert API_DRAIN_S <= CHILD_STOP_TIMEOUT_S

# `vigil api --workers`: processes serving one API on one host, each with its own pools
# (the database must have connections for all of them).
API_WORKERS_MAX: Final = 32


def check_money_ceilings(
    amount_max: int, overdraft_max: int, teller_overdraft_max: int, balance_max: int
) -> None:
    """Raise ValueError unless the ceilings (major units) relate as they must:
    teller overdraft <= overdraft <= amount <= balance, and a balance anywhere between
    -overdraft and the balance ceiling, in the currency with the most decimals, fits
    bigint with the headroom above."""
    if not 0 <= teller_overdraft_max <= overdraft_max:
        raise ValueError(
            f"VIGIL_TELLER_OVERDRAFT_MAX ({teller_overdraft_max}) must be between 0 and "
            f"VIGIL_OVERDRAFT_MAX ({overdraft_max})"
        )
    if overdraft_max > amount_max:
        raise ValueError(
            f"VIGIL_OVERDRAFT_MAX ({overdraft_max}) must be at most VIGIL_AMOUNT_MAX ({amount_max})"
        )
    if amount_max > balance_max:
        raise ValueError(
            f"VIGIL_AMOUNT_MAX ({amount_max}) must be at most VIGIL_BALANCE_MAX ({balance_max})"
        )
    range_minor = (balance_max + overdraft_max) * 10**CURRENCY_EXPONENT_MAX
    if range_minor > BALANCE_RANGE_MINOR_MAX:
        raise ValueError(
            f"VIGIL_BALANCE_MAX ({balance_max}) plus VIGIL_OVERDRAFT_MAX ({overdraft_max}) "
            f"is {range_minor} minor units with {CURRENCY_EXPONENT_MAX} decimal places, above "
            f"{BALANCE_RANGE_MINOR_MAX} (bigint / {HEADROOM_FACTOR}): lower them"
        )
