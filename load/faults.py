"""`make faults`: nothing lost, nothing doubled, under every crash we can cause.

Starts the whole system under `var/faults/run-<time>/` on free loopback ports, with servers of
its own (embedded PostgreSQL, Redis and broker; never the machine's), the children reaching
PostgreSQL through a loopback proxy that can stall. Opens and funds accounts in GBP and EUR,
then runs a mixed workload (transfers, deposits, withdrawals, holds placed then captured or
voided, batches; every command with its own transaction id, retried on timeouts, 5xx and
connection errors as a careful client does) while it injects faults, each kind once and
then at random:

  command-api-kill, command-api-kill-mid-batch (SIGKILL during a 1,000-item batch),
  query-api-kill, relay-kill, workers-kill, case-opener-kill (SIGKILL; started again after a
  second, as `vigil up` would), broker-restart (its topics lost), redis-down (killed, back
  after --redis-down-s), postgres-stop (pg_ctl stop, started after --postgres-down-s),
  postgres-kill (SIGKILL of every server process: crash recovery), postgres-stall (the proxy
  forwards nothing for --stall-s).

After each fault: the time to the first successful command and until the projections hold
every event, then, with the workload paused, the invariants (faults_checks.py); every tenth
fault and at the end also a fresh replay compared with the read models and `vigil audit
verify`. Then a conflict storm (--storm-clients clients on 4 accounts for --storm-s).
Prints a table and writes JSON to --out (default var/faults/latest.json). Exit 1 on any
violation. `--quick` (what `make test` runs): each kind once, shorter outages, no storm.

    python load/faults.py [--quick] [--faults 60] [--max-minutes 25] [--out PATH]

The long run at a steady load (memory, lag and the invariants over 20 minutes) is
`make soak` (load/soak.py), not this tool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_system import Http, System, run_in_system, start_tool
from faults_checks import Checker
from faults_proxy import StallingProxy
from faults_report import percentile, print_table, result_of, say
from faults_workload import BRANCH, Record, Workload

from infrastructure.ops.embedded import log_tail, start_broker, start_redis
from infrastructure.ops.postgres_server import EmbeddedPostgres, start_postgres
from infrastructure.settings import Settings, load_settings
from interfaces.api.http.tokens import issue_token

HERE = Path(__file__).resolve().parent
RULES = HERE / "faults_rules.toml"
KINDS = (
    "command-api-kill",
    "command-api-kill-mid-batch",
    "query-api-kill",
    "relay-kill",
    "workers-kill",
    "case-opener-kill",
    "broker-restart",
    "redis-down",
    "postgres-stop",
    "postgres-kill",
    "postgres-stall",
)
PARTS = {
    "command-api-kill": "command_api",
    "query-api-kill": "query_api",
    "relay-kill": "relay",
    "workers-kill": "workers",
    "case-opener-kill": "case_opener",
}
RESTART_AFTER_S = 1.0  # as `vigil up`'s supervisor, about
RECOVERY_TIMEOUT_S = 240.0
QUIET_TIMEOUT_S = 240.0
FULL_CHECK_EVERY = 10
TOKEN_TTL_S = 6 * 3600
ACCOUNTS_PER_CURRENCY = 100
STORM_ACCOUNTS = 4


# The run ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    fault: str
    violations: list[str]
    first_command_s: float | None
    caught_up_s: float | None


@dataclass
class Run:
    system: System
    proxy: StallingProxy
    args: argparse.Namespace
    settings: Settings
    workload: Workload
    checker: Checker
    query: Http
    rng: random.Random = field(default_factory=random.Random)
    outcomes: list[Outcome] = field(default_factory=list)
    exits: list[dict[str, str]] = field(default_factory=list)
    probe_account: str = ""
    _probe: asyncio.Task[float | None] | None = None

    # Faults ---------------------------------------------------------------------------------

    async def inject(self, fault: str) -> float:
        """Cause the fault, and end it (restart, bring back). Returns the moment recovery is
        timed from: the kill, for a process (its restart is part of the recovery); the end
        of the outage, for a server stopped or a network stalled for a set time."""
        if fault in PARTS:
            return await self._kill_and_restart(PARTS[fault])
        if fault == "command-api-kill-mid-batch":
            batch = asyncio.create_task(self.workload.big_batch())
            await asyncio.sleep(self.rng.uniform(0.05, 0.6))
            return await self._kill_and_restart("command_api", batch)
        if fault in ("broker-restart", "postgres-kill"):
            killed_s = self._crashed()  # its restart is part of the recovery
            if fault == "broker-restart":
                await asyncio.to_thread(self._restart_server, "broker", 0.0)
            else:
                await asyncio.to_thread(self._postgres_kill)
            return killed_s
        if fault == "redis-down":
            await asyncio.to_thread(self._restart_server, "redis", self.args.redis_down_s)
        elif fault == "postgres-stop":
            await asyncio.to_thread(self._postgres_stop, self.args.postgres_down_s)
        elif fault == "postgres-stall":
            self.proxy.stall()
            await asyncio.sleep(self.args.stall_s)
            self.proxy.resume()
        else:
            raise ValueError(fault)
        return time.monotonic()

    def _crashed(self) -> float:
        """The moment of a crash: recovery is timed from here, probing from now on."""
        crashed_s = time.monotonic()
        self._probe = asyncio.create_task(self.first_command(crashed_s))
        return crashed_s

    async def _kill_and_restart(
        self, part: str, batch: asyncio.Task[list[Record]] | None = None
    ) -> float:
        killed_s = self._crashed()
        for process in self.system.children.pop(part, []):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.process.wait)
        await asyncio.sleep(RESTART_AFTER_S)
        await asyncio.to_thread(self.system.start, part, None, again=True)
        if batch is not None:
            records = await batch  # its retries ran into the restarted API
            say(f"    the 1,000-item batch: {_tally(records)}")
        return killed_s

    def _server(self, name: str) -> Any:
        for k, (found, server) in enumerate(self.system.servers):
            if found == name:
                return k, server
        raise KeyError(name)

    def _restart_server(self, name: str, down_s: float) -> None:
        k, server = self._server(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.process.wait()
        time.sleep(down_s)
        port = int(urlsplit(f"//{server.bootstrap}" if name == "broker" else server.url).port)
        start = start_broker if name == "broker" else start_redis
        self.system.servers[k] = (name, start(self.system.run_dir, port))

    def _postgres_stop(self, down_s: float) -> None:
        k, server = self._server("postgres")
        server.stop()
        time.sleep(down_s)
        self._postgres_start(k, server)

    def _postgres_kill(self) -> None:
        k, server = self._server("postgres")
        postmaster = psutil.Process(server.pid)
        everyone = [postmaster, *postmaster.children(recursive=True)]
        for process in everyone:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(everyone, timeout=30)
        self._postgres_start(k, server)

    def _postgres_start(self, k: int, server: EmbeddedPostgres) -> None:
        started = start_postgres(self.system.run_dir, server.port)
        self.system.servers[k] = ("postgres", started)
        self.system.postgres = started

    # Recovery -------------------------------------------------------------------------------

    async def revive(self, fault: str) -> None:
        """Start again, as `vigil up`'s supervisor would, any part that exited by itself;
        each such exit is a finding (`exits`), if not a broken invariant."""
        for part, processes in list(self.system.children.items()):
            if all(p.alive() for p in processes):
                continue
            tail = log_tail(processes[0].log_path, 3)
            self.exits.append({"fault": fault, "part": part, "log": tail})
            say(f"    {part} exited by itself; started again ({tail.splitlines()[-1:]})")
            for process in self.system.children.pop(part):
                process.stop()
            await asyncio.to_thread(self.system.start, part, None, again=True)

    async def first_command(self, since_s: float) -> float | None:
        """Until a deposit succeeds (a probe, recorded like every command); seconds."""
        http = Http(str(self.system.info["command_api"]), self.workload.token)
        try:
            while time.monotonic() - since_s < RECOVERY_TIMEOUT_S:
                body = {"amount": "0.01", "currency": "GBP", "channel": "wire"}
                body["transaction_id"] = str(uuid.uuid4())
                path = f"/v1/accounts/{self.probe_account}/deposits"
                record = await self.workload.command(http, "deposit", path, body)
                if record.acknowledged:
                    return time.monotonic() - since_s
                await asyncio.sleep(0.1)
            return None
        finally:
            http.close()

    async def caught_up(self, since_s: float) -> float | None:
        """Until every projection holds the store's head as it is now; seconds since."""
        head = await asyncio.to_thread(self._head)
        while time.monotonic() - since_s < RECOVERY_TIMEOUT_S:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    status, reply = await self.query.request("GET", "/v1/projections")
                if status == 200:
                    data = orjson.loads(reply)
                    if min(int(i["position"]) for i in data["items"]) >= head:
                        return time.monotonic() - since_s
            self.query.close()
            await asyncio.sleep(0.2)
        return None

    def _head(self) -> int:
        with psycopg.connect(self.checker.settings.database_url, connect_timeout=10) as conn:
            row = conn.execute("SELECT max(notification_id) FROM public.event_index").fetchone()
        return int(row[0] or 0) if row else 0

    async def settle_and_check(self, full: bool) -> list[str]:
        """Pause the workload, wait for quiet and caught up (alerts in their cases too), then
        check every invariant; the workload goes on afterwards."""
        problems: list[str] = []
        if not await self.workload.quiet(QUIET_TIMEOUT_S):
            problems.append(f"{self.workload.in_flight} commands still out after the fault")
        try:
            if await self.caught_up(time.monotonic()) is None:
                problems.append("the projections did not catch up")
            problems += await self._alerts_settled()
            problems += await asyncio.to_thread(
                self.checker.check, list(self.workload.records), full=full
            )
            problems += self.workload.unexpected
            self.workload.unexpected.clear()
        finally:
            self.workload.gate.set()
        return problems

    async def _alerts_settled(self) -> list[str]:
        """Alerts reach their cases through the outbox, the broker and the case opener:
        wait (bounded) until each has one, then let the check say what is wrong."""
        deadline_s = time.monotonic() + RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline_s:
            homeless = await asyncio.to_thread(self._alerts_without_case)
            if homeless == 0:
                return []
            await asyncio.sleep(0.5)
        return [f"{homeless} alerts without a case after {RECOVERY_TIMEOUT_S:.0f} s"]

    def _alerts_without_case(self) -> int:
        with psycopg.connect(self.checker.settings.database_url, connect_timeout=10) as conn:
            row = conn.execute(ALERTS_WITHOUT_CASE).fetchone()
        return int(row[0]) if row else 0

    # The sequence ---------------------------------------------------------------------------

    async def one(self, fault: str, number: int, total: int) -> None:
        started_s = time.monotonic()
        say(f"[{number}/{total}] {fault}")
        # Timed from the crash, the probe running while the part restarts; or from the end
        # of an outage.
        since_s = await self.inject(fault)
        probe = self._probe or asyncio.create_task(self.first_command(since_s))
        self._probe = None
        await asyncio.sleep(1.0)  # what dies of the fault, dies now
        await self.revive(fault)
        first = await probe
        caught = await self.caught_up(since_s) if first is not None else None
        full = number % FULL_CHECK_EVERY == 0
        await self.revive(fault)
        violations = await self.settle_and_check(full)
        if first is None:
            violations.append(f"no command succeeded within {RECOVERY_TIMEOUT_S:.0f} s")
        elif caught is None:
            violations.append(f"not caught up within {RECOVERY_TIMEOUT_S:.0f} s")
        self.outcomes.append(Outcome(fault, violations, first, caught))
        took = time.monotonic() - started_s
        say(
            f"    first command {_seconds(first)}, caught up {_seconds(caught)}, "
            f"{'full ' if full else ''}check: {len(violations)} violations ({took:.0f} s)"
        )
        for line in violations[:10]:
            say(f"    VIOLATION {line}")

    def plan(self) -> list[str]:
        faults = list(KINDS)
        if self.args.quick:
            return faults
        while len(faults) < self.args.faults:
            faults.append(self.rng.choice(KINDS))
        return faults


ALERTS_WITHOUT_CASE = """
SELECT count(*) FROM readmodel.alerts a
WHERE NOT EXISTS (SELECT 1 FROM readmodel.cases c WHERE c.alert_id = a.alert_id)
  AND NOT EXISTS (SELECT 1 FROM readmodel.case_history h WHERE h.event_type = 'CaseAlertJoined'
                  AND h.details->>'alert_id' = a.alert_id::text)
  AND NOT EXISTS (SELECT 1 FROM readmodel.suppressed_alerts s WHERE s.alert_id = a.alert_id)
"""


def _tally(records: list[Record]) -> str:
    ok = sum(r.acknowledged for r in records)
    refused = sum(r.refused for r in records)
    unknown = len(records) - ok - refused
    return f"{ok} ok, {refused} refused" + (f", {unknown} unknown" if unknown else "")


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


# The conflict storm ----------------------------------------------------------------------------


async def conflict_storm(run: Run, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` clients moving money between 4 accounts as fast as they can: every update
    must land (each account's balance is what its acknowledged transfers make it), retries
    stay bounded, latency p99 reported."""
    workload = run.workload
    http = Http(str(run.system.info["command_api"]), workload.token)
    hot: list[str] = []
    try:
        for k in range(STORM_ACCOUNTS):
            body = {"owner": f"Storm {k}", "branch": BRANCH, "currency": "GBP"}
            body["idempotency_key"] = str(uuid.uuid4())
            record = await workload.command(http, "open", "/v1/accounts", body)
            hot.append(str(record.reply["account_id"]))
            body = {"amount": "1000.00", "currency": "GBP", "channel": "wire"}
            body["transaction_id"] = str(uuid.uuid4())
            await workload.command(http, "deposit", f"/v1/accounts/{hot[-1]}/deposits", body)
    finally:
        http.close()
    expected = dict.fromkeys(hot, 100_000)
    storm: list[Record] = []
    retries_before = sum(workload.retries.values())
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        http = Http(str(run.system.info["command_api"]), workload.token)
        rng = random.Random()
        try:
            while time.monotonic() < stop_at:
                source, target = rng.sample(hot, 2)
                minor = rng.randint(1, 100)
                body = {"from_account_id": source, "to_account_id": target}
                body |= {"amount": f"{minor // 100}.{minor % 100:02d}", "currency": "GBP"}
                body["transaction_id"] = str(uuid.uuid4())
                record = await workload.command(http, "transfer", "/v1/transfers", body)
                storm.append(record)
                if record.acknowledged:
                    expected[source] -= minor
                    expected[target] += minor
        finally:
            http.close()

    say(f"conflict storm: {clients} clients on {STORM_ACCOUNTS} accounts for {seconds:.0f} s")
    await asyncio.gather(*(client() for _ in range(clients)))
    settle_started_s = time.monotonic()
    # The read models must catch up and agree with the store (the check says if not).
    violations = await run.settle_and_check(full=False)
    settled_s = time.monotonic() - settle_started_s
    # A lost update is the ledger's: each hot account's balance in the event store (the
    # checker has just read it) against what its acknowledged transfers make it.
    for account_id in hot:
        balance = run.checker.state.balances[account_id][1]
        if balance != expected[account_id]:
            violations.append(
                f"storm account {account_id}: {balance} in the store, its acknowledged "
                f"transfers make {expected[account_id]} (a lost update)"
            )
    acknowledged = [r for r in storm if r.acknowledged]
    latencies = [r.latency_s * 1000 for r in acknowledged]
    result = {
        "clients": clients,
        "accounts": STORM_ACCOUNTS,
        "seconds": seconds,
        "transfers": len(acknowledged),
        "transfers_per_s": round(len(acknowledged) / seconds, 1),
        "refused": sum(r.refused for r in storm),
        "unknown": sum(not r.acknowledged and not r.refused for r in storm),
        "client_retries": sum(workload.retries.values()) - retries_before,
        "attempts_max": max((r.attempts for r in storm), default=0),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": percentile(latencies, 100),
        # From the storm's end until the read models held it all and the checks ran.
        "settled_s": round(settled_s, 1),
        "violations": violations,
    }
    say(
        f"    {result['transfers']:,} transfers ({result['transfers_per_s']}/s), p50 "
        f"{result['p50_ms']} ms, p99 {result['p99_ms']} ms, {result['client_retries']} client"
        f" retries, settled and checked in {settled_s:.0f} s, {len(violations)} violations"
    )
    return result


# Main ------------------------------------------------------------------------------------------


async def run_faults(system: System, proxy: StallingProxy, args: argparse.Namespace) -> dict:
    settings = load_settings(
        var_dir=system.run_dir, env="development", database_url=system.postgres.url
    )
    subject = f"faults-{uuid.uuid4().hex[:8]}"
    teller = issue_token(settings, role="teller", branch=BRANCH, subject=subject, ttl_s=TOKEN_TTL_S)
    admin = issue_token(settings, role="admin", subject=subject, ttl_s=TOKEN_TTL_S)
    workload = Workload(str(system.info["command_api"]), teller, pause_s=args.pause_s)
    # The tools as the system runs: its database (not through the proxy), its rules.
    env = system.env | {"VIGIL_DATABASE_URL": system.postgres.url}
    env["VIGIL_RULES_CONFIG"] = str(RULES)
    checker = Checker(settings, env)
    run = Run(
        system, proxy, args, settings, workload, checker, Http(system.info["query_api"], admin)
    )
    started_s = time.monotonic()
    try:
        say(f"setup: {ACCOUNTS_PER_CURRENCY} accounts in each of GBP and EUR, funded")
        await workload.open_accounts(ACCOUNTS_PER_CURRENCY, subject)
        run.probe_account = workload.accounts["GBP"][0]
        stop = asyncio.Event()
        workload.gate.set()
        clients = [asyncio.create_task(workload.client(stop)) for _ in range(args.clients)]
        try:
            await asyncio.sleep(3)
            plan = run.plan()
            deadline_s = started_s + args.max_minutes * 60
            for number, fault in enumerate(plan, start=1):
                if time.monotonic() > deadline_s and number > len(KINDS):
                    say(f"time is up after {number - 1} faults (--max-minutes)")
                    break
                await run.one(fault, number, len(plan))
            say("final check (replay and audit verify too)")
            final = await run.settle_and_check(full=True)
            storm = None
            if not args.quick and args.storm_s > 0:
                workload.gate.clear()
                await workload.quiet(QUIET_TIMEOUT_S)
                storm = await conflict_storm(run, args.storm_clients, args.storm_s)
        finally:
            stop.set()
            workload.gate.set()
            await asyncio.gather(*clients, return_exceptions=True)
    finally:
        checker.close()
        run.query.close()
    return result_of(run, final, storm, time.monotonic() - started_s)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each kind once, short outages")
    parser.add_argument("--faults", type=int, default=60, help="faults in all (at least 11)")
    parser.add_argument("--max-minutes", type=float, default=25.0, help="stop injecting after")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--pause-s", type=float, default=0.05, help="each client, between commands")
    parser.add_argument("--redis-down-s", type=float, default=20.0)
    parser.add_argument("--postgres-down-s", type=float, default=10.0)
    parser.add_argument("--stall-s", type=float, default=10.0)
    parser.add_argument("--storm-clients", type=int, default=64)
    parser.add_argument("--storm-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run's data directories")
    parser.add_argument("--out", type=Path, default=Path("var/faults/latest.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.redis_down_s = min(args.redis_down_s, 5.0)
        args.postgres_down_s = min(args.postgres_down_s, 5.0)
        args.stall_s = min(args.stall_s, 5.0)
        args.max_minutes = min(args.max_minutes, 10.0)
    if not 1 <= args.clients <= 64 or not len(KINDS) <= args.faults <= 1000:
        parser.error(f"--clients 1..64 and --faults {len(KINDS)}..1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at, run_dir = start_tool("faults")
    proxy: StallingProxy | None = None

    def through_proxy(postgres: EmbeddedPostgres) -> str:
        nonlocal proxy
        proxy = StallingProxy(postgres.port)
        port = proxy.start()
        parts = urlsplit(postgres.url)
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    system = System(run_dir, RULES, children_database_url=through_proxy)
    say(f"starting the system in {run_dir}")
    rng_seed = args.seed if args.seed is not None else random.randrange(2**32)
    random.seed(rng_seed)

    def work(system: System) -> dict[str, Any]:
        assert proxy is not None
        return asyncio.run(run_faults(system, proxy, args))

    code, result = run_in_system("faults", system, work, keep=args.keep)
    if result is None:
        return code
    result |= {
        "started_at": started_at.isoformat(timespec="seconds"),
        "quick": args.quick,
        "seed": rng_seed,
        "run_dir": str(run_dir),
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"written to {args.out}")
    return 0 if result["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
