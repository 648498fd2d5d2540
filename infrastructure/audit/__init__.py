"""Audit: chain and checkpoint verification, the checkpoint writer, signing keys, signed
exports and their verification, the access log, and the event stream the audit API reads."""
