"""The command API's CPU per single transfer, in process: the app's ASGI callable driven
directly (no sockets, no uvicorn), its committer's threads running as in production.

`ab_command.py` measures a whole server process; this measures the part of a single
command that the app's own code spends on the thread that serves HTTP (the event loop's
thread: middlewares, the fast routes, authentication, the endpoint, the reply), apart
from the committer's threads (judging and writing the groups), and runs in about 20 s.
Without sockets the host's swings matter less than between two servers, so a change of a
few per cent in the HTTP side shows over a few runs of each. `--profile` prints cProfile's
figures for that thread (they inflate small Python calls; compare, do not add).

    .venv/bin/python load/command_inproc.py [--transfers 4000] [--clients 16] [--runs 3]
    .venv/bin/python load/command_inproc.py --transfers 2000 --profile cumulative
    .venv/bin/python load/command_inproc.py --items 100 --clients 4 --transfers 20000

It uses the machine's PostgreSQL and Redis as the tests do (a fresh migrated database,
dropped at the end; its own Redis key prefix) and logs to /dev/null at info level, as the
command API logs to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from infrastructure.logging import configure_logging  # noqa: E402
from infrastructure.runtime import tune_gc  # noqa: E402
from tests.conftest import Databases  # noqa: E402
from tests.e2e.conftest import make_token  # noqa: E402

ACCOUNTS = 200
HOST_HEADERS = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]


class Client:
    """Calls the app as uvicorn would, one request at a time: the body in one message."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.headers = [*HOST_HEADERS, (b"authorization", f"Bearer {token}".encode())]

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        headers = [
            *self.headers,
            (b"idempotency-key", uuid.uuid4().hex.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError("unreachable")

        reply: dict[str, Any] = {"body": b""}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                reply["status"] = message["status"]
            elif message["type"] == "http.response.body":
                reply["body"] += message.get("body", b"")

        await self.app(scope, receive, send)
        return int(reply["status"]), bytes(reply["body"])


async def open_accounts(client: Client) -> list[str]:
    ids = []
    for k in range(ACCOUNTS):
        body = orjson.dumps({"owner": f"Owner {k}", "branch": "001", "currency": "GBP"})
        status, reply = await client.post("/v1/accounts", body)
        if status != 201:
            raise SystemExit(f"opening an account: {status} {reply!r}")
        account_id = orjson.loads(reply)["account_id"]
        money = orjson.dumps({"amount": "100000.00", "currency": "GBP"})
        status, reply = await client.post(f"/v1/accounts/{account_id}/deposits", money)
        if status != 201:
            raise SystemExit(f"funding an account: {status} {reply!r}")
        ids.append(account_id)
    return ids


async def send_all(
    client: Client, bodies: list[bytes], clients: int, path: str = "/v1/transfers"
) -> dict[int, int]:
    """Every request, `clients` at a time; the statuses other than 201 (200 for a batch),
    counted."""
    refused: dict[int, int] = {}
    created = 200 if path == "/v1/batches" else 201

    async def worker() -> None:
        while bodies:
            status, _ = await client.post(path, bodies.pop())
            if status != created:
                refused[status] = refused.get(status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(clients)))
    return refused


async def measure(app: Any, token: str, args: argparse.Namespace) -> None:
    client = Client(app, token)
    async with app.router.lifespan_context(app):
        ids = await open_accounts(client)
        rng = random.Random(1)
        for run in range(1, args.runs + 1):
            transfers: list[dict[str, str]] = []
            for _ in range(args.transfers):
                source, target = rng.sample(ids, 2)
                transfer = {"from_account_id": source, "to_account_id": target}
                transfers.append(transfer | {"amount": "0.01", "currency": "GBP"})
            if args.items == 1:
                path, bodies = "/v1/transfers", [orjson.dumps(t) for t in transfers]
            else:
                path = "/v1/batches"
                bodies = [
                    orjson.dumps({"items": [{"type": "transfer", **t} for t in chunk]})
                    for chunk in (
                        transfers[at : at + args.items]
                        for at in range(0, len(transfers), args.items)
                    )
                ]
            profile = cProfile.Profile() if args.profile else None
            thread_s, process_s = time.thread_time(), time.process_time()
            wall_s = time.perf_counter()
            if profile is not None:
                profile.enable()
            refused = await send_all(client, bodies, args.clients, path)
            if profile is not None:
                profile.disable()
            thread_s = time.thread_time() - thread_s
            process_s = time.process_time() - process_s
            wall_s = time.perf_counter() - wall_s
            n = args.transfers
            print(
                f"run {run}: {n / wall_s:,.0f} transfers/s; CPU per transfer: "
                f"{1e6 * thread_s / n:,.0f} µs on the HTTP thread, "
                f"{1e6 * (process_s - thread_s) / n:,.0f} µs on the committer's threads"
                + (f"; refused {refused}" if refused else ""),
                flush=True,
            )
            if profile is not None:
                pstats.Stats(profile).sort_stats(args.profile).print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=4_000, help="per run")
    parser.add_argument("--clients", type=int, default=16, help="requests in flight")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--items", type=int, default=1, help="transfers per request: more than 1 sends batches"
    )
    parser.add_argument("--profile", choices=("tottime", "cumulative"), default=None)
    args = parser.parse_args()
    if not 1 <= args.transfers <= 100_000 or not 1 <= args.clients <= 256:
        parser.error("--transfers 1..100,000 and --clients 1..256")
    if not 1 <= args.items <= 1_000:
        parser.error("--items 1..1,000 (a batch's most)")
    databases = Databases()
    with tempfile.TemporaryDirectory(prefix="vigil-inproc-") as var:
        var_dir = Path(var)
        try:
            databases.create_template(var_dir / "template")
            settings = databases.settings_for(
                databases.fresh(),
                var_dir,
                redis_key_prefix=f"vigil-inproc-{uuid.uuid4().hex}:",
                rate_limit_commands_per_s=0,
            )
            with open(os.devnull, "w") as devnull:
                configure_logging("info", "command-api", stream=devnull)
                from interfaces.api.command.app import create_command_app

                app = create_command_app(settings)
                tune_gc()
                token = make_token(settings, "teller", branch="001", subject="inproc-teller")
                import uvloop

                uvloop.run(measure(app, token, args))
        finally:
            databases.drop_all()


if __name__ == "__main__":
    main()
