"""Monitoring: the alerts projection and its windows, the rules configuration, an alert's
evidence re-run, and back-testing a configuration against the history."""
