"""Everything that touches the outside world: PostgreSQL, Kafka, Redis, files, processes.

Layers, bottom up (an import-linter contract in pyproject.toml holds them): the settings,
limits, logging and metrics at this root; `postgres` and `kafka`; `eventstore`;
`readmodels`; `monitoring` and `audit`; `relay` and `workers`; `ops`. A package may
import from the layers below it, never from those above."""
