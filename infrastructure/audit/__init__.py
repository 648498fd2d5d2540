"""Audit: chain and checkpoint verification, the checkpoint writer, signing keys, signed
exports and their verification, and the access log."""
