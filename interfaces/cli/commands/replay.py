"""`vigil replay [PROJECTION] [--to-shadow | --diff]`: rebuild read models from the event
store, in place or into a shadow schema, or compare a shadow with the live read models
(exit 1 when they differ)."""

from __future__ import annotations

import argparse

from infrastructure.settings import Settings


def run_replay_cli(args: argparse.Namespace, settings: Settings) -> int:
    """Replay, or with `--diff` compare; every line as it comes."""
    from infrastructure.ops.replay import run_replay_cli

    return run_replay_cli(args, settings)
