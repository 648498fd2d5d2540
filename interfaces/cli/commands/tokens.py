"""`vigil token issue`: a signed development token, printed alone on stdout."""

from __future__ import annotations

import argparse

from infrastructure.settings import Settings
from interfaces.cli.parsing import UsageError


def run_issue_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil token issue --role R [--branch B] [--subject S] [--ttl-s N]
    [--key-file PEM [--kid K]]`."""
    from interfaces.api.http.tokens import check_claims, issue_token

    try:
        check_claims(args.role, args.branch, args.ttl_s)
        if args.key_file is not None:
            print(
                issue_token(
                    settings,
                    role=args.role,
                    subject=args.subject,
                    branch=args.branch,
                    ttl_s=args.ttl_s,
                    key_file=args.key_file,
                    kid=args.kid,
                )
            )
            return 0
    except (ValueError, OSError) as error:
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
