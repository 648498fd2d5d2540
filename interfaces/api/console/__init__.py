"""The web console: server-rendered pages for compliance, operations, auditors and
tellers, served by the query API at `/console`."""
