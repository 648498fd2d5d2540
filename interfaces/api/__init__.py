"""The command API and the query API: separate apps, processes and ports."""
