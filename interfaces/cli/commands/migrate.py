"""`vigil migrate [--grant-to ROLE]`: every table of every part, run as the owning
(migration) role; says each step as it is done, and whether the event index is behind."""

from __future__ import annotations

import argparse

from infrastructure.settings import Settings


def run_migrate_cli(args: argparse.Namespace, settings: Settings) -> int:
    """Migrate, then say how long it took; exit 0 (refusals leave as ConfigurationError)."""
    from infrastructure.ops.migrate import run_migrate_cli

    return run_migrate_cli(args, settings)
