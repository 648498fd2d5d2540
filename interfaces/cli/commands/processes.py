"""`vigil up|api|workers|project|relay|case-opener|clean`: the long-running processes,
each with its logger set up first, and removing what `vigil up` left in `var/`."""

from __future__ import annotations

import argparse

from infrastructure.runtime import tune_gc
from infrastructure.settings import Settings


def run_up_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil up`: the whole system on this machine."""
    from interfaces.cli.up import run_up

    return run_up(settings)


def run_api_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil api command|query [--port] [--workers]`."""
    from interfaces.api.http.serve import serve_api

    return serve_api(args.which, settings, port=args.port, workers=args.workers)


def run_workers_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil workers [--metrics-port]`: every projection in one process."""
    from infrastructure.logging import configure_logging
    from infrastructure.readmodels.schema import ALL_PROJECTIONS
    from infrastructure.workers.projections import serve_workers

    configure_logging(settings.log_level, service="workers")
    port = settings.workers_metrics_port if args.metrics_port is None else args.metrics_port
    tune_gc()
    return serve_workers(settings, ALL_PROJECTIONS, port)


def run_project_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil project NAME [--metrics-port]`: one projection."""
    from infrastructure.logging import configure_logging
    from infrastructure.workers.projections import serve_workers

    configure_logging(settings.log_level, service=f"project-{args.name}")
    tune_gc()
    return serve_workers(settings, [args.name], args.metrics_port or 0)


def run_relay_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil relay [--metrics-port]`."""
    from infrastructure.logging import configure_logging
    from infrastructure.relay.events import run_relay

    configure_logging(settings.log_level, service="relay")
    port = settings.relay_metrics_port if args.metrics_port is None else args.metrics_port
    tune_gc()
    return run_relay(settings, metrics_port=port)


def run_case_opener_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil case-opener [--metrics-port]`."""
    from infrastructure.logging import configure_logging
    from infrastructure.workers.case_opener import run_case_opener

    configure_logging(settings.log_level, service="case-opener")
    port = settings.case_opener_metrics_port if args.metrics_port is None else args.metrics_port
    tune_gc()
    return run_case_opener(settings, metrics_port=port)


def run_clean_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil clean`: remove `var/`, refused while anything still runs on it."""
    from interfaces.cli.clean import clean

    return clean(settings.var_dir)
