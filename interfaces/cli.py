"""The `vigil` command line. Each subcommand imports what it needs, so `vigil --help` is quick."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from infrastructure.settings import ConfigurationError, Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from interfaces.up import run_up

    return run_up(settings)


def _cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from interfaces.api.serve import serve_api

    return serve_api(args.which, settings, port=args.port, workers=args.workers)


def _cmd_token_issue(args: argparse.Namespace, settings: Settings) -> int:
    from interfaces.tokens import issue_token

    token = issue_token(
        settings,
        role=args.role,
        subject=args.subject,
        branch=args.branch,
        ttl_s=args.ttl_s,
    )
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description="Vigil ledger and monitoring")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole system on this machine")
    up.set_defaults(handler=_cmd_up)

    api = commands.add_parser("api", help="serve one HTTP API")
    api.add_argument("which", choices=["command"], help="which API")
    api.add_argument("--port", type=int, default=None, help="port (default from settings)")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(handler=_cmd_api)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        handler: Handler = args.handler
        return handler(args, settings)
    except ConfigurationError as error:
        print(f"vigil: configuration error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
