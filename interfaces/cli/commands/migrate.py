"""`vigil migrate [--grant-to ROLE]`: every table of every part, run as the owning
(migration) role; says each step as it is done, and whether the event index is behind."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from infrastructure.settings import Settings

if TYPE_CHECKING:
    from infrastructure.ops.migrate import StepDone


def run_migrate_cli(args: argparse.Namespace, settings: Settings) -> int:
    """Migrate, then say how long it took; exit 0 (refusals leave as ConfigurationError)."""
    from infrastructure.ops.migrate import check_role_exists, event_index_heads, migrate

    grant_to: str | None = args.grant_to
    if grant_to is not None:
        check_role_exists(settings, grant_to)
    print("migrating: every table of every part, under the migration lock…", flush=True)
    started = time.monotonic()
    migrate(settings, grant_to=grant_to, progress=_say_step)
    store_head, index_head = event_index_heads(settings)
    print(f"migrated in {time.monotonic() - started:.2f} s")
    if index_head is None or index_head < store_head:
        # Derived data is never rebuilt behind the operator's back.
        print(
            f"note: the event index ends at {index_head or 0:,}, the store at {store_head:,}: "
            "run `vigil audit reindex`",
            flush=True,
        )
    return 0


def _say_step(step: StepDone) -> None:
    took = "" if step.elapsed_s is None else f" ({step.elapsed_s:.2f} s)"
    print(f"  {step.label}: ok{took}", flush=True)
