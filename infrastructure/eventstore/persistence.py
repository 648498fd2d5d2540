"""The library's PostgreSQL factory, with the connection parameters of VIGIL_DATABASE_URL the
library has no setting for (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
`application_name`, ...): passed to its connection pool as libpq keywords, so that the event
store's connections are encrypted and verified exactly as the URL says, like every other
connection Vigil makes from that URL."""

from __future__ import annotations

import json
from typing import Final

from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment, EnvType

CONNECT_PARAMS: Final = "VIGIL_POSTGRES_CONNECT_PARAMS"  # JSON: {libpq keyword: value}


class VigilPostgresFactory(PostgresFactory):
    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        extra = self.env.get(CONNECT_PARAMS)
        if extra:
            # The pool opens lazily: its first connection already carries these.
            pool_kwargs = self.datastore.pool.kwargs
            assert isinstance(pool_kwargs, dict), "the library passes the pool a dict"
            pool_kwargs.update(json.loads(extra))
