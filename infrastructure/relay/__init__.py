"""`vigil relay`: the ledger events and the alerts outbox published to Kafka, the relay's
state in PostgreSQL, its topics and its metrics."""
