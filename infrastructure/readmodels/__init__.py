"""The read models: their schema, exactly-once tracking, the row writers, the balances
cache in Redis, the quarantine, and what the query API reads (the read-only store, the
readers, freshness waits)."""
