"""The command API: the only way money moves."""
