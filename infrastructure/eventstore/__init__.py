"""The event store: the recorder (events, event index, command replies in one
transaction), the store's schema and append-only guards, opening the ledger, stored events
as envelopes, the transcoder and canonical JSON, and the reply cache in Redis."""
