"""PostgreSQL as every part reaches it: connections, advisory locks, SQL helpers."""
