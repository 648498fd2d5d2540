"""The library's PostgreSQL factory, with the connection parameters of VIGIL_DATABASE_URL the
library has no setting for (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
`application_name`, ...): passed to its connection pool as libpq keywords, so that the event
store's connections are encrypted and verified exactly as the URL says, like every other
connection Vigil makes from that URL; and the event store's session options, set before the
pool opens its first connection."""

from __future__ import annotations

import json
from typing import Final

from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment, EnvType

from infrastructure.postgres.connect import store_session_options

CONNECT_PARAMS: Final = "VIGIL_POSTGRES_CONNECT_PARAMS"  # JSON: {libpq keyword: value}


class VigilPostgresFactory(PostgresFactory):
    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        # The pool opens lazily: its first connection already carries these. (Set later,
        # a connection the pool was opening meanwhile could escape them.)
        pool_kwargs = self.datastore.pool.kwargs
        assert isinstance(pool_kwargs, dict), "the library passes the pool a dict"
        extra = self.env.get(CONNECT_PARAMS)
        if extra:
            pool_kwargs.update(json.loads(extra))
        options = str(pool_kwargs.get("options") or "")
        wanted = store_session_options(self.datastore.lock_timeout)
        pool_kwargs["options"] = f"{options} {wanted}".strip()
