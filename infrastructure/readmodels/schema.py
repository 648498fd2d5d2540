"""The read models' tables, in their own schema beside the event store.

Written only by projection workers (each change in the same transaction as its
tracking rows), read by the query API. All can be dropped and rebuilt from the store.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Final

import psycopg

from infrastructure.readmodels.refused import REFUSED_MESSAGES_DDL

SCHEMA = "readmodel"

# The channels the read models NOTIFY after a commit: the query API's read-your-writes
# waits hear the first two (payload: account id, version); the outbox relay the third.
ACCOUNTS_CHANNEL: Final = "readmodel_accounts"
TRANSACTIONS_CHANNEL: Final = "readmodel_transactions"
OUTBOX_CHANNEL: Final = "alerts_outbox"
# Which projection's commits NOTIFY which channel.
NOTIFY_CHANNELS: Final = {"balances": ACCOUNTS_CHANNEL, "statements": TRANSACTIONS_CHANNEL}

# Projection names (the API contract): `balances` is the accounts read model.
PROJECTIONS = ("balances", "statements", "kpis", "cases", "watchlist")
# With the alerts projection, whose tables and SQL are its own (`monitoring/alerts.py`).
ALL_PROJECTIONS = (*PROJECTIONS, "alerts")


def ddl(schema: str = SCHEMA) -> str:
    """The read models' tables in `schema` (the live one, or a shadow for `vigil replay`)."""
    return f"""
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.accounts (
    account_id uuid PRIMARY KEY,
    owner text NOT NULL,
    branch text NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    balance_minor bigint NOT NULL,
    overdraft_limit_minor bigint NOT NULL,
    version bigint NOT NULL,
    opened_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    last_transaction_at timestamptz,
    notification_id bigint NOT NULL,
    -- What pending holds reserve: available = balance + overdraft limit - held.
    held_minor bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS accounts_branch_idx ON {schema}.accounts (branch, account_id);

CREATE TABLE IF NOT EXISTS {schema}.transactions (
    account_id uuid NOT NULL,
    version bigint NOT NULL,
    transaction_id uuid,
    counterparty_account_id uuid,
    direction text NOT NULL CHECK (direction IN ('credit', 'debit')),
    kind text NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    balance_after_minor bigint NOT NULL,
    currency text NOT NULL,
    reference text,
    channel text,
    actor_subject text NOT NULL,
    actor_role text NOT NULL,
    occurred_at timestamptz NOT NULL,
    correlation_id text,
    notification_id bigint NOT NULL,
    PRIMARY KEY (account_id, version),
    -- A reversal's line names the transaction it reverses; every line, how much of it
    -- reversals took back.
    reverses uuid,
    reversed_minor bigint NOT NULL DEFAULT 0
);
-- Read models made before holds and reversals: their columns added (a constant default
-- rewrites nothing), only where missing, so a start that would change nothing locks nothing.
DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}'
            AND table_name = 'accounts' AND column_name = 'held_minor') THEN
        ALTER TABLE {schema}.accounts ADD COLUMN held_minor bigint NOT NULL DEFAULT 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}'
            AND table_name = 'transactions' AND column_name = 'reverses') THEN
        ALTER TABLE {schema}.transactions ADD COLUMN reverses uuid,
            ADD COLUMN reversed_minor bigint NOT NULL DEFAULT 0;
    END IF;
END $do$;

-- Holds, each as its latest event left it (the balances projection writes them).
CREATE TABLE IF NOT EXISTS {schema}.holds (
    hold_id uuid PRIMARY KEY,
    account_id uuid NOT NULL,
    to_account_id uuid,
    amount_minor bigint NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    reference text,
    review jsonb,
    expires_at timestamptz NOT NULL,
    placed_at timestamptz NOT NULL,
    ended_at timestamptz,
    captured_minor bigint,
    capture_transaction_id uuid,
    end_reason text,
    version bigint NOT NULL,
    notification_id bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS holds_account_idx
    ON {schema}.holds (account_id, placed_at DESC, hold_id);
CREATE INDEX IF NOT EXISTS transactions_time_idx
    ON {schema}.transactions (account_id, occurred_at DESC, version DESC);

-- KPI sums grow without bound over time (a balance is bounded by BALANCE_MAX, a sum of
-- movements is not): numeric, so no volume of business can overflow them.
CREATE TABLE IF NOT EXISTS {schema}.kpis_hourly (
    hour timestamptz NOT NULL,
    currency text NOT NULL,
    metric text NOT NULL,
    count bigint NOT NULL,
    sum_minor numeric NOT NULL,
    PRIMARY KEY (hour, currency, metric)
);

CREATE TABLE IF NOT EXISTS {schema}.kpis_branch (
    branch text NOT NULL,
    currency text NOT NULL,
    metric text NOT NULL,
    count bigint NOT NULL,
    sum_minor numeric NOT NULL,
    PRIMARY KEY (branch, currency, metric)
);

-- Read models made when the sums were bigint: the same values, as numeric.
DO $do$ DECLARE kpi_table text; BEGIN
    FOR kpi_table IN SELECT table_name FROM information_schema.columns
            WHERE table_schema = '{schema}' AND table_name IN ('kpis_hourly', 'kpis_branch')
            AND column_name = 'sum_minor' AND data_type = 'bigint' LOOP
        EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN sum_minor TYPE numeric',
            '{schema}', kpi_table);
    END LOOP;
END $do$;

-- The kpis projection's own memory of each account's branch (from AccountOpened).
CREATE TABLE IF NOT EXISTS {schema}.kpi_account_branches (
    account_id uuid PRIMARY KEY,
    branch text NOT NULL
);

-- What each projection has applied: a contiguous high-water mark (every stored
-- notification id at or below it is applied) plus sparse rows above it. `blocked_at`:
-- the stored id the mark last stopped at (not yet tracked), or NULL if not known.
CREATE TABLE IF NOT EXISTS {schema}.projection_positions (
    projection text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    applied_events bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    blocked_at bigint
);
-- Read models made before `blocked_at` existed: add it, without locking the table if
-- it is there.
DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}'
            AND table_name = 'projection_positions' AND column_name = 'blocked_at') THEN
        ALTER TABLE {schema}.projection_positions ADD COLUMN blocked_at bigint;
    END IF;
END $do$;
CREATE TABLE IF NOT EXISTS {schema}.projection_tracking (
    projection text NOT NULL,
    notification_id bigint NOT NULL,
    PRIMARY KEY (projection, notification_id)
);

-- The cases projection: each step of each case, and each case as its steps make it.
CREATE TABLE IF NOT EXISTS {schema}.case_history (
    case_id uuid NOT NULL,
    version bigint NOT NULL,
    event_type text NOT NULL,
    status text,
    actor_subject text NOT NULL,
    actor_role text NOT NULL,
    note text,
    details jsonb NOT NULL,
    at timestamptz NOT NULL,
    notification_id bigint NOT NULL,
    PRIMARY KEY (case_id, version)
);
CREATE TABLE IF NOT EXISTS {schema}.cases (
    case_id uuid PRIMARY KEY,
    alert_id uuid NOT NULL UNIQUE,
    account_id uuid NOT NULL,
    branch text,
    rule text NOT NULL,
    severity text NOT NULL,
    status text NOT NULL,
    assignee text,
    resolution text,
    explanation text NOT NULL,
    version bigint NOT NULL,
    opened_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    closed_at timestamptz,
    notification_id bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_opened_idx ON {schema}.cases (opened_at DESC, case_id DESC);
CREATE INDEX IF NOT EXISTS cases_account_idx ON {schema}.cases (account_id);
CREATE INDEX IF NOT EXISTS cases_status_idx ON {schema}.cases (status, severity);

-- Suppressions (the cases projection): each as its events left it, and the alerts they
-- held back from opening cases (their status is `suppressed`).
CREATE TABLE IF NOT EXISTS {schema}.suppressions (
    suppression_id uuid PRIMARY KEY,
    account_id uuid NOT NULL,
    rule text NOT NULL,
    until timestamptz NOT NULL,
    reason text NOT NULL,
    status text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    revoked_by text,
    revoke_reason text,
    version bigint NOT NULL,
    notification_id bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS suppressions_account_idx
    ON {schema}.suppressions (account_id, rule);
CREATE TABLE IF NOT EXISTS {schema}.suppressed_alerts (
    alert_id uuid PRIMARY KEY,
    suppression_id uuid NOT NULL,
    account_id uuid NOT NULL,
    at timestamptz NOT NULL,
    notification_id bigint NOT NULL
);
-- An alert that joined an open case is found by its id in that case's history.
CREATE INDEX IF NOT EXISTS case_history_joined_alert_idx
    ON {schema}.case_history ((details->>'alert_id')) WHERE event_type = 'CaseAlertJoined';

-- The watchlist projection: each account's entry as its latest event left it.
CREATE TABLE IF NOT EXISTS {schema}.watchlist (
    account_id uuid PRIMARY KEY,
    listed boolean NOT NULL,
    reason text NOT NULL,
    changed_at timestamptz NOT NULL,
    changed_by text NOT NULL,
    changed_by_role text NOT NULL,
    version bigint NOT NULL,
    notification_id bigint NOT NULL
);
"""


RULE_CONFIGS_DDL = """
CREATE TABLE IF NOT EXISTS public.rule_configs (
    version serial PRIMARY KEY,
    sha256 text NOT NULL UNIQUE,
    parameters jsonb NOT NULL,
    source text NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
"""


def alerts_ddl(schema: str = SCHEMA) -> str:
    """The alerts projection's tables in `schema` (live, or a shadow for `vigil replay`)."""
    return f"""
-- Each account's rule window (`monitoring/windows.py`): this header, and its movements as
-- rows of their own, written as they come and go (rewriting whole windows cost every event
-- O(window)). `state` is a window as earlier versions stored it, whole, as JSON text; NULL
-- once its movements are rows (its next save makes them so). The columns in the order
-- that the ALTERs below leave an earlier table in: `vigil replay --diff` compares rows.
CREATE TABLE IF NOT EXISTS {schema}.rule_windows (
    account_id uuid PRIMARY KEY,
    version bigint NOT NULL,
    state text,
    opened_at timestamptz,
    branch text,
    last_movement_at timestamptz
);
-- Read models made by earlier versions: the state as text (it was jsonb), nullable, and
-- the header's columns added (no rewrite: they have no default). Each change only where it
-- is missing, so a start that would change nothing takes no lock on the table.
DO $do$ BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}'
            AND table_name = 'rule_windows' AND column_name = 'state'
            AND data_type = 'jsonb') THEN
        ALTER TABLE {schema}.rule_windows ALTER COLUMN state TYPE text USING state::text;
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}'
            AND table_name = 'rule_windows' AND column_name = 'state'
            AND is_nullable = 'NO') THEN
        ALTER TABLE {schema}.rule_windows ALTER COLUMN state DROP NOT NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}'
            AND table_name = 'rule_windows' AND column_name = 'opened_at') THEN
        ALTER TABLE {schema}.rule_windows ADD COLUMN opened_at timestamptz,
            ADD COLUMN branch text, ADD COLUMN last_movement_at timestamptz;
    END IF;
END $do$;
-- A window's movements; `used`: the rules whose evidence the movement already is.
CREATE TABLE IF NOT EXISTS {schema}.rule_window_movements (
    account_id uuid NOT NULL,
    notification_id bigint NOT NULL,
    transaction_id text,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    direction text NOT NULL,
    amount_minor bigint NOT NULL,
    currency text NOT NULL,
    channel text,
    counterparty_account_id text,
    used text[] NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (account_id, notification_id)
);
CREATE TABLE IF NOT EXISTS {schema}.alerts (
    alert_id uuid PRIMARY KEY,
    rule text NOT NULL,
    severity text NOT NULL,
    account_id uuid NOT NULL,
    branch text,
    transaction_ids jsonb NOT NULL,
    positions jsonb NOT NULL,
    explanation text NOT NULL,
    raised_at timestamptz NOT NULL,
    notification_id bigint NOT NULL,
    chain_head text,
    rule_config_version int NOT NULL,
    case_id uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_raised_idx ON {schema}.alerts (raised_at DESC, alert_id);
CREATE INDEX IF NOT EXISTS alerts_account_idx ON {schema}.alerts (account_id);
CREATE TABLE IF NOT EXISTS {schema}.alerts_outbox (
    id bigserial PRIMARY KEY,
    alert_id uuid NOT NULL,
    account_id uuid NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The relay's trim reads only the rows past the retention.
CREATE INDEX IF NOT EXISTS alerts_outbox_created_idx ON {schema}.alerts_outbox (created_at);
"""


# Tables whose rows are rewritten many times a second (an account's balance, its rule
# window, each projection's position, the KPI sums), with the share of each page left
# free: the new version of a row then fits on its page and the indexes are left alone
# (a HOT update), and the page is pruned as it is read. And vacuumed after a fixed number
# of dead rows rather than a fifth of the table. Without this, under a steady load the
# accounts table held twice as many dead rows as live ones before autovacuum came round,
# and looking up a batch's accounts took 40 ms instead of under 1.
HOT_TABLES: Final = {
    "accounts": 70,
    "rule_windows": 70,
    "projection_positions": 10,
    "kpis_hourly": 70,
    "kpis_branch": 70,
}
# Rows inserted many times a second and deleted later (a window's movements, once too old
# for every rule; an alert in the outbox, once routed and past the outbox's retention):
# vacuumed after a fixed number of dead rows.
CHURNED_TABLES: Final = ("projection_tracking", "alerts_outbox", "rule_window_movements")
VACUUM_AFTER_ROWS: Final = 1_000
VACUUM_SCALE: Final = 0.02


def storage_options() -> dict[str, dict[str, str]]:
    """The storage parameters of the busiest tables, by table."""
    vacuum = {
        "autovacuum_vacuum_threshold": str(VACUUM_AFTER_ROWS),
        "autovacuum_vacuum_scale_factor": str(VACUUM_SCALE),
        "autovacuum_analyze_threshold": str(VACUUM_AFTER_ROWS),
        "autovacuum_analyze_scale_factor": str(VACUUM_SCALE * 5),
    }
    options = {table: {"fillfactor": str(fill)} | vacuum for table, fill in HOT_TABLES.items()}
    return options | {table: dict(vacuum) for table in CHURNED_TABLES}


def set_storage(conn: psycopg.Connection[Any], schema: str = SCHEMA) -> None:
    """Set the busiest tables' storage in `schema` where it is not set yet: `ALTER TABLE
    ... SET` waits for a vacuum of the table to end, so a start that would change nothing
    does not ask for the lock."""
    cursor = conn.execute(
        "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
        (schema,),
    )
    current = {str(name): set(options or ()) for name, options in cursor.fetchall()}
    for table, wanted in storage_options().items():
        if {f"{k}={v}" for k, v in wanted.items()} <= current.get(table, set()):
            continue
        settings = ", ".join(f"{k} = {v}" for k, v in wanted.items())
        conn.execute(f"ALTER TABLE {schema}.{table} SET ({settings})")


DDL_ATTEMPTS = 5
DDL_RETRY_S = 0.2


def schema_fingerprint(schema: str = SCHEMA) -> str:
    """The sha256 of everything `ensure_read_models` would run in `schema`."""
    parts = [ddl(schema), RULE_CONFIGS_DDL, alerts_ddl(schema), quarantine_ddl(schema)]
    parts += [repr(sorted(storage_options().items())), repr(sorted(ALL_PROJECTIONS))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def ensure_read_models(conn: psycopg.Connection[Any], schema: str = SCHEMA) -> None:
    """Create what is missing: every projection's tables (the alerts' and the rules
    configurations' too), positions and quarantine, and set the busiest tables' storage.
    Callers hold the migration lock.

    A schema made by this very code (its fingerprint recorded with it) is left alone: the
    DDL, even `IF NOT EXISTS`, takes table locks, and run while the workers write (a
    process restarted beside them) it deadlocked with them. When it must run (a new or
    changed schema), a deadlock or lock wait it loses is retried."""
    fingerprint = schema_fingerprint(schema)
    if _recorded_fingerprint(conn, schema) == fingerprint:
        # Storage that drifted (an operator's ALTER) is set again: it locks nothing unless
        # something is to change.
        set_storage(conn, schema)
        return
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            with conn.transaction():
                _create(conn, schema, fingerprint)
            return
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
            if attempt == DDL_ATTEMPTS:
                raise
            time.sleep(DDL_RETRY_S * attempt)


def _create(conn: psycopg.Connection[Any], schema: str, fingerprint: str) -> None:
    conn.execute(ddl(schema))
    conn.execute(RULE_CONFIGS_DDL)
    conn.execute(alerts_ddl(schema))
    conn.execute(quarantine_ddl(schema))
    set_storage(conn, schema)
    for name in ALL_PROJECTIONS:
        conn.execute(
            f"INSERT INTO {schema}.projection_positions (projection) VALUES (%s) "
            "ON CONFLICT DO NOTHING",
            (name,),
        )
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.schema_fingerprint ("
        "id int PRIMARY KEY CHECK (id = 1), fingerprint text NOT NULL, "
        "recorded_at timestamptz NOT NULL DEFAULT now())"
    )
    conn.execute(
        f"INSERT INTO {schema}.schema_fingerprint (id, fingerprint) VALUES (1, %s) "
        "ON CONFLICT (id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, recorded_at = now()",
        (fingerprint,),
    )


def _recorded_fingerprint(conn: psycopg.Connection[Any], schema: str) -> str | None:
    found = conn.execute("SELECT to_regclass(%s)", (f"{schema}.schema_fingerprint",)).fetchone()
    if found is None or found[0] is None:
        return None
    row = conn.execute(f"SELECT fingerprint FROM {schema}.schema_fingerprint").fetchone()
    return None if row is None else str(row[0])


def quarantine_ddl(schema: str) -> str:
    """The projections' quarantine in `schema` (the live read models, or a replay's
    shadow), and the relay's, which is the store's (in `public`: replays keep it)."""
    return f"""
CREATE TABLE IF NOT EXISTS {schema}.quarantined_events (
    projection text NOT NULL,
    notification_id bigint NOT NULL,
    event_type text NOT NULL,
    aggregate_id uuid NOT NULL,
    version bigint NOT NULL,
    error text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    retried_at timestamptz,
    resolved_at timestamptz,
    PRIMARY KEY (projection, notification_id)
);
CREATE INDEX IF NOT EXISTS quarantined_events_aggregate_idx
    ON {schema}.quarantined_events (projection, aggregate_id);
{RELAY_QUARANTINE_DDL}
{REFUSED_MESSAGES_DDL}
"""


RELAY_QUARANTINE_DDL: Final = """
CREATE TABLE IF NOT EXISTS public.relay_quarantine (
    notification_id bigint PRIMARY KEY,
    topic text NOT NULL,
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    error text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    retried_at timestamptz,
    resolved_at timestamptz
);
CREATE INDEX IF NOT EXISTS relay_quarantine_originator_idx
    ON public.relay_quarantine (originator_id);
"""
