"""The command API's CPU per command, old code against new, measured side by side.

On a host whose speed swings by half within minutes, two benchmark runs one after the
other cannot show a change of a few per cent. This runs the command API of two checkouts
at once, each on a fresh migrated database of its own (on the machine's PostgreSQL, as the
tests use it) and a Redis key prefix of its own, opens and funds the same number of
accounts on both, and sends both the same closed-loop load at the same time: whatever the
host does, it does to both. It prints each server's commands a second and microseconds of
its process's CPU per command, for a few rounds.

    .venv/bin/python load/ab_command.py OLD_CHECKOUT NEW_CHECKOUT [--items 100]

Each checkout needs its own `.venv` (`make install` in it). `--items 1` (the default) sends
single transfers (`POST /v1/transfers`), more sends batches of that many transfers. Only
127.0.0.1 is ever sent to; the databases are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "load"))
from bench_system import Http  # noqa: E402

from tests.conftest import Databases, free_port, settings_env  # noqa: E402
from tests.e2e.conftest import make_token  # noqa: E402

ACCOUNTS = 200
READY_TIMEOUT_S = 30.0


class Server:
    def __init__(self, checkout: Path, databases: Databases, var_dir: Path, index: int) -> None:
        self.name = checkout.name
        self.settings = databases.settings_for(
            databases.fresh(),
            var_dir / f"server-{index}",
            redis_key_prefix=f"vigil-ab-{uuid.uuid4().hex}:",
            rate_limit_commands_per_s=0,
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (var_dir / f"server-{index}.log").open("wb")
        command = ["-m", "interfaces.cli", "api", "command", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [str(checkout / ".venv/bin/python"), *command],
            cwd=checkout,
            env=settings_env(self.settings),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.cpu = psutil.Process(self.process.pid)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name}: the command API exited (see {self.log.name})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise SystemExit(f"{self.name}: not ready in {READY_TIMEOUT_S:.0f} s")

    def cpu_s(self) -> float:
        times = self.cpu.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def open_accounts(server: Server, token: str) -> list[str]:
    http, ids = Http(server.url, token), []
    try:
        for k in range(ACCOUNTS):
            body = {"owner": f"Owner {k}", "branch": "001", "currency": "GBP"}
            status, reply = await http.request(
                "POST", "/v1/accounts", orjson.dumps(body), uuid.uuid4().hex
            )
            if status != 201:
                raise SystemExit(f"{server.name}: opening an account: {status} {reply!r}")
            account_id = orjson.loads(reply)["account_id"]
            money = orjson.dumps({"amount": "100000.00", "currency": "GBP"})
            path = f"/v1/accounts/{account_id}/deposits"
            status, reply = await http.request("POST", path, money, uuid.uuid4().hex)
            if status != 201:
                raise SystemExit(f"{server.name}: funding an account: {status} {reply!r}")
            ids.append(account_id)
    finally:
        http.close()
    return ids


def _transfer(rng: random.Random, ids: list[str]) -> dict[str, str]:
    source, target = rng.sample(ids, 2)
    return {"from_account_id": source, "to_account_id": target, "amount": "0.01",
            "currency": "GBP"}  # fmt: skip


async def load(
    server: Server, token: str, ids: list[str], args: argparse.Namespace, deadline: float
) -> Counter[str]:
    outcomes: Counter[str] = Counter()

    async def client() -> None:
        http, rng = Http(server.url, token), random.Random()
        try:
            while time.monotonic() < deadline:
                if args.items == 1:
                    body = orjson.dumps(_transfer(rng, ids))
                    status, _ = await http.request("POST", "/v1/transfers", body, uuid.uuid4().hex)
                    outcomes["ok" if status == 201 else str(status)] += 1
                    continue
                items = [{"type": "transfer", **_transfer(rng, ids)} for _ in range(args.items)]
                body = orjson.dumps({"items": items})
                status, _ = await http.request("POST", "/v1/batches", body, uuid.uuid4().hex)
                outcomes["ok" if status == 200 else str(status)] += (
                    args.items if status == 200 else 1
                )
        finally:
            http.close()

    await asyncio.gather(*(client() for _ in range(args.clients)))
    return outcomes


async def measure(servers: list[Server], args: argparse.Namespace) -> None:
    token = make_token(servers[0].settings, "teller", branch="001", subject="ab-teller")
    ids = [await open_accounts(server, token) for server in servers]
    for round_number in range(1, args.rounds + 1):
        cpu_before = [server.cpu_s() for server in servers]
        deadline = time.monotonic() + args.seconds
        outcomes = await asyncio.gather(
            *(load(s, token, i, args, deadline) for s, i in zip(servers, ids, strict=True))
        )
        parts = []
        for server, before, counted in zip(servers, cpu_before, outcomes, strict=True):
            done = counted["ok"]
            per_command = 1e6 * (server.cpu_s() - before) / max(done, 1)
            others = {k: v for k, v in counted.items() if k != "ok"}
            parts.append(
                f"{server.name}: {done / args.seconds:,.0f} commands/s, "
                f"{per_command:,.0f} µs of CPU per command" + (f" {others}" if others else "")
            )
        print(f"round {round_number}: " + " | ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs=2, type=Path, help="old and new checkout")
    parser.add_argument("--items", type=int, default=1, choices=range(1, 1001), metavar="N")
    parser.add_argument("--clients", type=int, default=None, help="per server")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.clients is None:
        args.clients = 12 if args.items == 1 else 4
    databases = Databases()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="vigil-ab-") as var:
        var_dir = Path(var)
        try:
            databases.create_template(var_dir / "template")
            servers = [
                Server(checkout.resolve(), databases, var_dir, index)
                for index, checkout in enumerate(args.checkouts)
            ]
            for server in servers:
                server.wait_ready()
            asyncio.run(measure(servers, args))
        finally:
            for server in servers:
                server.stop()
            databases.drop_all()


if __name__ == "__main__":
    main()
