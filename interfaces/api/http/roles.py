"""The roles a token may carry (the API contract), and the system's own. Apart from the
RBAC table so that the command line can name them without loading the web framework."""

from __future__ import annotations

from enum import StrEnum

from domain.integrity import SYSTEM_ROLE


class Role(StrEnum):
    TELLER = "teller"
    ADMIN = "admin"
    AUDITOR = "auditor"
    COMPLIANCE = "compliance"
    VIEWER = "viewer"
    # Internal actors (the case opener); a token claiming it is refused.
    SYSTEM = SYSTEM_ROLE


TOKEN_ROLES = frozenset(role for role in Role if role is not Role.SYSTEM)
