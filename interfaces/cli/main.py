"""The `vigil` command line: the parser and the dispatch. Each command's handler lives in
`interfaces/cli/commands/`, by command group, and imports what it needs when it runs, so
`vigil --help` is quick."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from infrastructure.limits import API_WORKERS_MAX
from infrastructure.readmodels.schema import ALL_PROJECTIONS
from infrastructure.settings import ConfigurationError, Settings, load_settings
from interfaces.api.http.roles import TOKEN_ROLES, Role
from interfaces.cli.commands import processes
from interfaces.cli.commands.audit import (
    run_export_cli,
    run_reindex_cli,
    run_verify_cli,
    run_verify_export_cli,
)
from interfaces.cli.commands.keys import run_generate_cli
from interfaces.cli.commands.migrate import run_migrate_cli
from interfaces.cli.commands.quarantine import run_list_cli, run_retry_cli
from interfaces.cli.commands.replay import run_replay_cli
from interfaces.cli.commands.rules import run_backtest_cli
from interfaces.cli.commands.tokens import run_issue_cli
from interfaces.cli.parsing import Parser, UsageError, add_range, bounded_int, one_line

Handler = Callable[[argparse.Namespace, Settings | None], int]


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
    up.set_defaults(handler=processes.run_up_cli)

    api = commands.add_parser("api", help="serve one HTTP API")
    api.add_argument("which", choices=["command", "query"], help="which API")
    api.add_argument("--port", type=int, default=None, help="port (default from settings)")
    api.add_argument(
        "--workers",
        type=bounded_int(1, API_WORKERS_MAX),
        default=1,
        help="processes serving the API on its one port (default 1)",
    )
    api.set_defaults(handler=processes.run_api_cli)

    workers = commands.add_parser("workers", help="run every projection worker")
    workers.add_argument("--metrics-port", type=int, default=None, help="0 disables /metrics")
    workers.set_defaults(handler=processes.run_workers_cli)

    project = commands.add_parser("project", help="run one projection worker")
    project.add_argument("name", choices=ALL_PROJECTIONS)
    project.add_argument("--metrics-port", type=int, default=None, help="/metrics port")
    project.set_defaults(handler=processes.run_project_cli)

    relay = commands.add_parser("relay", help="publish stored events to Kafka")
    relay.add_argument("--metrics-port", type=int, default=None, help="0 disables /metrics")
    relay.set_defaults(handler=processes.run_relay_cli)

    opener = commands.add_parser("case-opener", help="open a case for every alert")
    opener.add_argument("--metrics-port", type=int, default=None, help="0 disables /metrics")
    opener.set_defaults(handler=processes.run_case_opener_cli)


def _add_rules_commands(commands: Commands) -> None:
    rules = commands.add_parser("rules", help="monitoring rules")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    backtest = rules_commands.add_parser(
        "backtest", help="run a candidate rule configuration over the event history"
    )
    backtest.add_argument("--config", type=Path, required=True, help="candidate TOML file")
    add_range(backtest)
    backtest.add_argument("--examples", type=int, default=5, help="examples per difference")
    backtest.set_defaults(handler=run_backtest_cli)


def _add_audit_commands(commands: Commands) -> None:
    migrate = commands.add_parser(
        "migrate", help="create or upgrade every table, as the owning (migration) role"
    )
    migrate.add_argument(
        "--grant-to", default=None, help="service role to grant what the services need"
    )
    migrate.set_defaults(handler=run_migrate_cli)

    audit = commands.add_parser("audit", help="tamper evidence and exports, for auditors")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_commands.add_parser(
        "verify", help="recompute every hash chain, MAC and checkpoint; exit 1 if tampered"
    )
    add_range(verify)
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=run_verify_cli)
    reindex = audit_commands.add_parser("reindex", help="rebuild the event index from the store")
    reindex.set_defaults(handler=run_reindex_cli)
    export = audit_commands.add_parser("export", help="a signed, complete export of events")
    add_range(export, required=True)
    export.add_argument("--account", default=None, help="only this account's events")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--out", type=Path, required=True, help="directory to create")
    export.set_defaults(handler=run_export_cli)
    verify_export = audit_commands.add_parser(
        "verify-export", help="check an export on its own, without the database"
    )
    verify_export.add_argument("directory", type=Path)
    verify_export.set_defaults(handler=run_verify_export_cli)

    replay = commands.add_parser("replay", help="rebuild a read model from the event store")
    replay.add_argument("projection", nargs="?", default=None)
    # One or the other: a diff compares what an earlier --to-shadow built.
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--to-shadow", action="store_true", help="into a shadow schema")
    mode.add_argument("--diff", action="store_true", help="compare shadow and live")
    replay.set_defaults(handler=run_replay_cli)

    quarantine = commands.add_parser(
        "quarantine", help="events a projection or the relay could not apply, set aside"
    )
    quarantine_commands = quarantine.add_subparsers(
        dest="quarantine_command", required=True, metavar="ACTION"
    )
    listing = quarantine_commands.add_parser("list", help="show the quarantined events")
    listing.add_argument("--all", action="store_true", help="resolved ones too")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(handler=run_list_cli)
    retry = quarantine_commands.add_parser(
        "retry", help="apply the quarantined events again, after the cause is fixed"
    )
    retry.add_argument(
        "--consumer", default=None, help="only this projection's (or `relay`) events"
    )
    retry.add_argument("--id", type=int, default=None, help="only this notification id")
    retry.set_defaults(handler=run_retry_cli)


def _add_token_commands(commands: Commands) -> None:
    clean = commands.add_parser(
        "clean", help="remove var/, refused while anything still runs on it"
    )
    clean.set_defaults(handler=processes.run_clean_cli)

    keys = commands.add_parser("keys", help="production secrets, made fresh as files")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_commands.add_parser(
        "generate",
        help="signing key, MAC, cipher, metrics and JWT keys into a new 0700 directory",
    )
    generate.add_argument("directory", type=Path)
    generate.set_defaults(handler=run_generate_cli, needs_settings=False)

    token = commands.add_parser("token", help="development tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    issue = token_commands.add_parser("issue", help="print a signed token")
    # The roles a token may carry, in the order of the RBAC table's role type.
    roles = [role.value for role in Role if role in TOKEN_ROLES]
    issue.add_argument("--role", required=True, choices=roles)
    issue.add_argument("--branch", default=None, help="branch code (required for tellers)")
    issue.add_argument("--subject", default=None, help="token subject (default: ROLE-dev)")
    issue.add_argument("--ttl-s", type=int, default=None, help="lifetime in seconds")
    issue.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="PEM private key (RSA: RS256, P-256: ES256) to sign with, as an identity "
        "provider would, instead of the HS256 key",
    )
    issue.add_argument("--kid", default=None, help="with --key-file: the kid (default: its stem)")
    issue.set_defaults(handler=run_issue_cli)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler: Handler = args.handler
        if not getattr(args, "needs_settings", True):
            return handler(args, None)  # `vigil keys`: makes what the settings need
        return handler(args, load_settings())
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
