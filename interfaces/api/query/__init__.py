"""The query API's routers and the read side they share: read store, cache, freshness waits.

It only reads: its database connections default to read-only transactions, and it never
writes the Redis cache (the projection workers do).
"""
