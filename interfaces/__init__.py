"""The ways in: the `vigil` command line and the two HTTP APIs."""
