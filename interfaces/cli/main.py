"""The `vigil` command line. Each subcommand imports what it needs, so `vigil --help` is quick."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from infrastructure.settings import ConfigurationError, Settings, load_settings
from infrastructure.wording import plural
from interfaces.cli.parsing import Parser, UsageError, add_range, one_line

Handler = Callable[[argparse.Namespace, Settings], int]
T = TypeVar("T")


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from interfaces.cli.up import run_up

    return run_up(settings)


def _cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from interfaces.api.http.serve import serve_api

    return serve_api(args.which, settings, port=args.port, workers=args.workers)


def _cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.logging import configure_logging
    from infrastructure.readmodels.schema import ALL_PROJECTIONS
    from infrastructure.workers.projections import serve_workers

    configure_logging(settings.log_level, service="workers")
    port = settings.workers_metrics_port if args.metrics_port is None else args.metrics_port
    return serve_workers(settings, ALL_PROJECTIONS, port)


def _cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.logging import configure_logging
    from infrastructure.workers.projections import serve_workers

    configure_logging(settings.log_level, service=f"project-{args.name}")
    return serve_workers(settings, [args.name], args.metrics_port or 0)


def _cmd_relay(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.logging import configure_logging
    from infrastructure.relay.events import run_relay

    configure_logging(settings.log_level, service="relay")
    port = settings.relay_metrics_port if args.metrics_port is None else args.metrics_port
    return run_relay(settings, metrics_port=port)


def _cmd_case_opener(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.logging import configure_logging
    from infrastructure.workers.case_opener import run_case_opener

    configure_logging(settings.log_level, service="case-opener")
    port = settings.case_opener_metrics_port if args.metrics_port is None else args.metrics_port
    return run_case_opener(settings, metrics_port=port)


def _cmd_rules_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.monitoring.backtest import describe, run_backtest

    if not args.config.is_file():
        raise UsageError(f"--config {args.config}: no such file")
    print(f"back-testing {args.config} against the event store…", flush=True)
    report = run_backtest(
        settings,
        args.config,
        since=args.since,
        until=args.until,
        say=lambda line: print(line, flush=True),
    )
    print("\n".join(describe(report, args.examples)))
    return 0


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.ops.migrate import run_migrate_cli

    return run_migrate_cli(args, settings)


def _cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.audit.verify import run_verify_cli

    return run_verify_cli(args, settings)


def _cmd_audit_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.eventstore.index import run_reindex_cli

    return run_reindex_cli(args, settings)


def _cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.audit.export import run_export_cli

    return run_export_cli(args, settings)


def _cmd_audit_verify_export(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.audit.export import run_verify_export_cli

    if not args.directory.is_dir():
        raise UsageError(f"{args.directory}: no such directory (give the export's directory)")
    return run_verify_export_cli(args, settings)


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from infrastructure.ops.replay import run_replay_cli

    return run_replay_cli(args, settings)


def _cmd_quarantine_list(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import json

    from infrastructure.ops.quarantine import list_quarantined

    items = asyncio.run(_with_connection(settings, lambda c: list_quarantined(c, args.all)))
    if args.json:
        for item in items:
            print(json.dumps({**vars(item)}, default=str))
        return 0
    if not items:
        print("no quarantined events" + ("" if args.all else " waiting"))
        return 0
    for item in items:
        state = "resolved" if item.resolved_at else "waiting"
        where = f"notification {item.notification_id}" if item.notification_id else "message"
        print(
            f"{item.quarantined_at:%Y-%m-%dT%H:%M:%SZ}  {item.consumer:<12} {where}  "
            f"{item.event_type}  {item.aggregate_id or '-'} v{item.version or '-'}  {state}"
        )
        print(f"    {item.error}")
    waiting = plural(len(items), "quarantined event")
    print(f"{waiting}; `vigil quarantine retry` once the cause is fixed")
    return 0


def _cmd_quarantine_retry(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from infrastructure.eventstore.ledger import open_ledger
    from infrastructure.ops.quarantine import RetryOutcome, retry_quarantined

    def say(outcome: RetryOutcome) -> None:
        verdict = "applied" if outcome.resolved else f"still failing: {outcome.error}"
        print(f"{outcome.consumer} notification {outcome.notification_id}: {verdict}", flush=True)

    ledger = open_ledger(settings)
    try:
        outcomes = asyncio.run(
            _with_connection(
                settings,
                lambda c: retry_quarantined(settings, ledger, c, args.consumer, args.id, say),
            )
        )
    finally:
        ledger.close()
    failed = sum(1 for o in outcomes if not o.resolved)
    print(f"{len(outcomes) - failed} applied, {failed} still quarantined")
    return 1 if failed else 0


async def _with_connection(settings: Settings, use: Callable[[Any], Awaitable[T]]) -> T:
    from infrastructure.postgres.connect import connect_async

    async with await connect_async(settings, "cli", autocommit=True) as conn:
        return await use(conn)


def _cmd_token_issue(args: argparse.Namespace, settings: Settings) -> int:
    from interfaces.api.http.tokens import check_claims, issue_token

    try:
        check_claims(args.role, args.branch, args.ttl_s)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if not settings.jwt_keys_given():
        # The dev key of a `vigil up` that is not running would sign tokens nobody accepts
        # (and, with no var/ here, a fresh key would be made for nothing).
        settings.require_up("VIGIL_JWT_SECRET")
    token = issue_token(
        settings, role=args.role, subject=args.subject, branch=args.branch, ttl_s=args.ttl_s
    )
    print(token)
    return 0


def _cmd_clean(args: argparse.Namespace, settings: Settings) -> int:
    from interfaces.cli.clean import clean

    return clean(settings.var_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vigil", description="Vigil ledger and monitoring")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_process_commands(commands)
    _add_rules_commands(commands)
    _add_audit_commands(commands)
    _add_token_commands(commands)
    return parser


# A string: argparse's action class is not subscriptable at run time on Python 3.11.
Commands: TypeAlias = "argparse._SubParsersAction[Parser]"


def _add_process_commands(commands: Commands) -> None:
    up = commands.add_parser("up", help="run the whole system on this machine")
    up.set_defaults(handler=_cmd_up)

    api = commands.add_parser("api", help="serve one HTTP API")
    api.add_argument("which", choices=["command", "query"], help="which API")
    api.add_argument("--port", type=int, default=None, help="port (default from settings)")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(handler=_cmd_api)

    workers = commands.add_parser("workers", help="run every projection worker")
    workers.add_argument("--metrics-port", type=int, default=None, help="0 disables /metrics")
    workers.set_defaults(handler=_cmd_workers)

    project = commands.add_parser("project", help="run one projection worker")
    project.add_argument(
        "name", choices=["balances", "statements", "kpis", "alerts", "cases", "watchlist"]
    )
    project.add_argument("--metrics-port", type=int, default=None, help="/metrics port")
    project.set_defaults(handler=_cmd_project)

    relay = commands.add_parser("relay", help="publish stored events to Kafka")
    relay.add_argument("--metrics-port", type=int, default=None, help="0 disables /metrics")
    relay.set_defaults(handler=_cmd_relay)

    opener = commands.add_parser("case-opener", help="open a case for every alert")
    opener.add_argument("--metrics-port", type=int, default=None, help="0 disables /metrics")
    opener.set_defaults(handler=_cmd_case_opener)


def _add_rules_commands(commands: Commands) -> None:
    rules = commands.add_parser("rules", help="monitoring rules")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    backtest = rules_commands.add_parser(
        "backtest", help="run a candidate rule configuration over the event history"
    )
    backtest.add_argument("--config", type=Path, required=True, help="candidate TOML file")
    add_range(backtest)
    backtest.add_argument("--examples", type=int, default=5, help="examples per difference")
    backtest.set_defaults(handler=_cmd_rules_backtest)


def _add_audit_commands(commands: Commands) -> None:
    migrate = commands.add_parser(
        "migrate", help="create or upgrade every table, as the owning (migration) role"
    )
    migrate.add_argument(
        "--grant-to", default=None, help="service role to grant what the services need"
    )
    migrate.set_defaults(handler=_cmd_migrate)

    audit = commands.add_parser("audit", help="tamper evidence and exports, for auditors")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_commands.add_parser(
        "verify", help="recompute every hash chain, MAC and checkpoint; exit 1 if tampered"
    )
    add_range(verify)
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_cmd_audit_verify)
    reindex = audit_commands.add_parser("reindex", help="rebuild the event index from the store")
    reindex.set_defaults(handler=_cmd_audit_reindex)
    export = audit_commands.add_parser("export", help="a signed, complete export of events")
    add_range(export, required=True)
    export.add_argument("--account", default=None, help="only this account's events")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--out", type=Path, required=True, help="directory to create")
    export.set_defaults(handler=_cmd_audit_export)
    verify_export = audit_commands.add_parser(
        "verify-export", help="check an export on its own, without the database"
    )
    verify_export.add_argument("directory", type=Path)
    verify_export.set_defaults(handler=_cmd_audit_verify_export)

    replay = commands.add_parser("replay", help="rebuild a read model from the event store")
    replay.add_argument("projection", nargs="?", default=None)
    # One or the other: a diff compares what an earlier --to-shadow built.
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--to-shadow", action="store_true", help="into a shadow schema")
    mode.add_argument("--diff", action="store_true", help="compare shadow and live")
    replay.set_defaults(handler=_cmd_replay)

    quarantine = commands.add_parser(
        "quarantine", help="events a projection or the relay could not apply, set aside"
    )
    quarantine_commands = quarantine.add_subparsers(
        dest="quarantine_command", required=True, metavar="ACTION"
    )
    listing = quarantine_commands.add_parser("list", help="show the quarantined events")
    listing.add_argument("--all", action="store_true", help="resolved ones too")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(handler=_cmd_quarantine_list)
    retry = quarantine_commands.add_parser(
        "retry", help="apply the quarantined events again, after the cause is fixed"
    )
    retry.add_argument(
        "--consumer", default=None, help="only this projection's (or `relay`) events"
    )
    retry.add_argument("--id", type=int, default=None, help="only this notification id")
    retry.set_defaults(handler=_cmd_quarantine_retry)


def _add_token_commands(commands: Commands) -> None:
    clean = commands.add_parser(
        "clean", help="remove var/, refused while anything still runs on it"
    )
    clean.set_defaults(handler=_cmd_clean)

    token = commands.add_parser("token", help="development tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    issue = token_commands.add_parser("issue", help="print a signed token")
    issue.add_argument(
        "--role", required=True, choices=["teller", "admin", "auditor", "compliance", "viewer"]
    )
    issue.add_argument("--branch", default=None, help="branch code (required for tellers)")
    issue.add_argument("--subject", default=None, help="token subject (default: ROLE-dev)")
    issue.add_argument("--ttl-s", type=int, default=None, help="lifetime in seconds")
    issue.set_defaults(handler=_cmd_token_issue)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        handler: Handler = args.handler
        return handler(args, settings)
    except ConfigurationError as error:
        print(f"vigil: configuration error: {one_line(error)}", file=sys.stderr)
        return 2
    except UsageError as error:
        print(f"{parser.prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
