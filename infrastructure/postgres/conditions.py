"""WHERE clauses built from the filters a caller gave, as psycopg compositions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import sql


def equal_to(
    filters: Mapping[str, Any], params: dict[str, Any], table: str | None = None
) -> list[sql.Composable]:
    """`column = %(column)s` for each filter given (None: not given), its value put in
    `params`. Only the filters given: a prepared statement's generic plan of
    `(%s IS NULL OR column = %s)` would ignore the indexes."""
    conditions: list[sql.Composable] = []
    for column, value in filters.items():
        if value is not None:
            name = sql.Identifier(column) if table is None else sql.Identifier(table, column)
            conditions.append(sql.SQL("{} = {}").format(name, sql.Placeholder(column)))
            params[column] = value
    return conditions


def where_all(conditions: Sequence[sql.Composable]) -> sql.Composable:
    """` WHERE a AND b ...`, or nothing when there is no condition."""
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
