"""The `vigil` commands, one module per command group: each reads its parsed arguments,
calls the infrastructure, and prints what comes back. Imports of the work below are
inside the handlers, so `vigil --help` stays quick."""
