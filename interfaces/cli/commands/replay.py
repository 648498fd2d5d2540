"""`vigil replay [PROJECTION] [--to-shadow | --diff]`: rebuild read models from the event
store, in place or into a shadow schema, or compare a shadow with the live read models
(exit 1 when they differ)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from infrastructure.settings import ConfigurationError, Settings
from interfaces.cli.wording import plural

if TYPE_CHECKING:
    from infrastructure.ops.replay import ReplayProgress, RowDifference


def run_replay_cli(args: argparse.Namespace, settings: Settings) -> int:
    """Replay, or with `--diff` compare; every line as it comes."""
    from infrastructure.ops.replay import SHADOW_SCHEMA, diff, replay
    from infrastructure.readmodels.schema import SCHEMA

    projections = _chosen(args.projection)
    if args.diff:
        differences = diff(settings, projections, _say_difference)
        print("no difference" if differences == 0 else plural(differences, "difference"))
        return 1 if differences else 0
    schema = SHADOW_SCHEMA if args.to_shadow else SCHEMA
    replay(settings, projections, schema, _say_progress)
    return 0


def _chosen(projection: str | None) -> list[str]:
    """The named projection, or all of them."""
    from infrastructure.ops.replay import TABLES

    if projection is None:
        return list(TABLES)
    if projection not in TABLES:
        raise ConfigurationError(f"unknown projection {projection!r}: one of {', '.join(TABLES)}")
    return [projection]


def _say_progress(progress: ReplayProgress) -> None:
    if progress.stage == "started":
        line = (
            f"replaying {', '.join(progress.projections)} into {progress.schema} "
            f"from {progress.head:,} stored events…"
        )
    elif progress.stage == "running":
        rate = progress.events / progress.elapsed_s
        line = f"  {progress.position:,} of {progress.head:,} ({rate:,.0f} events/s)"
    else:
        seconds = progress.elapsed_s
        rate = progress.events / seconds if seconds else float(progress.events)
        line = f"replayed {progress.events:,} events in {seconds:.1f} s ({rate:,.0f} events/s)"
    print(line, flush=True)


def _say_difference(difference: RowDifference) -> None:
    row = difference.row
    ident = ", ".join(f"{k}={row[k]}" for k in difference.keys)
    print(f"{difference.table} [{ident}] {difference.only_in} only: {row}", flush=True)
