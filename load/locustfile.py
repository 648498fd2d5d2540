"""Locust scenarios against a running `vigil up`, loopback only.

Run from the directory where `vigil up` runs (URLs from `var/up.json`, tokens signed with its
development key):

    locust -f load/locustfile.py --headless                  # ramps to 20 users, stops at 60 s
    locust -f load/locustfile.py --headless -u 40 -t 120s    # 40 users for 120 s

`RampThenStop` reads `-u`, `-r` and `-t` and caps them (USERS_MAX, RUN_TIME_S_MAX), so every
run ends by itself. Requests are named by route template (`[cmd] /v1/transfers`,
`[query] /v1/accounts/{id}?min_version`) so the statistics group per route.
"""

from __future__ import annotations

import itertools
import random
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from locust import LoadTestShape, between, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from target import read_target, require_loopback

USERS_DEFAULT = 20
USERS_MAX = 200
RUN_TIME_S_DEFAULT = 60
RUN_TIME_S_MAX = 600
RAMP_S = 10  # reach the peak in this long unless -r says otherwise
ACCOUNTS_PER_TELLER = 3
ACCOUNTS_PER_BATCH_TELLER = 10
BATCH_TRANSFERS = 100
OPENING_DEPOSIT_MINOR = 1_000_00
AMOUNT_MINOR_MAX = 50_00
# A teller's own refusal, not a fault of the system under load.
EXPECTED_REFUSALS = frozenset({"insufficient_funds"})

TARGET = read_target()  # refuses a non-loopback up.json before any user exists
RUN_ID = uuid.uuid4().hex[:8]  # fresh idempotency keys every run
SUBJECT_NUMBERS = itertools.count()
# -u, -r, -t as given on the command line (None when not given), read once at init.
REQUESTED: dict[str, Any] = {}
# account id -> highest version a command reply reported: what a Viewer asks the query API
# to have caught up with. At most one entry per account the users opened.
LATEST_VERSIONS: dict[str, int] = {}


@events.init.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    if environment.host:
        require_loopback(environment.host, "--host")
    options = environment.parsed_options
    REQUESTED.update(
        users=getattr(options, "num_users", None),
        spawn_rate=getattr(options, "spawn_rate", None),
        run_time_s=getattr(options, "run_time", None),
    )


def _subject(role: str) -> str:
    return f"load-{role}-{RUN_ID}-{next(SUBJECT_NUMBERS)}"


def _amount(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def _random_amount() -> str:
    return _amount(random.randint(100, AMOUNT_MINOR_MAX))


def _saw(account_id: str, version: int) -> None:
    if version > LATEST_VERSIONS.get(account_id, 0):
        LATEST_VERSIONS[account_id] = version


def _problem_code(response: Any) -> str:
    try:
        return str(response.json().get("code", ""))
    except (ValueError, AttributeError):
        return ""


class _CommandUser(FastHttpUser):
    """A teller of branch 001 with accounts of its own, talking to the command API."""

    abstract = True
    host = TARGET.command_api
    accounts_count = ACCOUNTS_PER_TELLER

    def on_start(self) -> None:
        self.subject = _subject("teller")
        self.headers = {"Authorization": f"Bearer {TARGET.token('teller', self.subject)}"}
        self.keys = itertools.count()
        self.accounts: list[str] = []
        for n in range(self.accounts_count):
            reply = self.command(
                "/v1/accounts",
                "[cmd] /v1/accounts",
                {"owner": f"Load {self.subject} #{n}", "branch": "001", "currency": "GBP"},
            )
            if reply is not None:
                self.accounts.append(reply["account_id"])
                _saw(reply["account_id"], reply["version"])
        if len(self.accounts) < 2:
            raise StopUser  # nothing to transfer between; the failures are in the stats

    def key(self) -> str:
        return f"{self.subject}-{next(self.keys)}"

    def command(
        self, path: str, name: str, body: dict[str, Any], key: str | None = None
    ) -> dict[str, Any] | None:
        """POST a command; its reply, or None when refused (a failure unless expected)."""
        headers = {**self.headers, "Idempotency-Key": key or self.key()}
        with self.client.post(
            f"{TARGET.command_api}{path}",
            json=body,
            headers=headers,
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code in (200, 201):
                return response.json()  # type: ignore[no-any-return]
            code = _problem_code(response)
            if response.status_code == 409 and code in EXPECTED_REFUSALS:
                response.success()
            else:
                response.failure(f"{response.status_code} {code}")
            return None


class Teller(_CommandUser):
    """Deposits, withdrawals and transfers among a few accounts of its own, one at a time."""

    weight = 6
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.last_deposit: tuple[str, dict[str, Any], str] | None = None
        super().on_start()
        for account_id in self.accounts:
            self.move("deposits", account_id, _amount(OPENING_DEPOSIT_MINOR))

    def move(self, kind: str, account_id: str, amount: str) -> None:
        path = f"/v1/accounts/{account_id}/{kind}"
        body = {"amount": amount, "currency": "GBP", "reference": f"load {kind}"}
        key = self.key()
        reply = self.command(path, f"[cmd] /v1/accounts/{{id}}/{kind}", body, key)
        if reply is not None:
            _saw(account_id, reply["version"])
            if kind == "deposits":
                self.last_deposit = (path, body, key)

    @task(3)
    def deposit(self) -> None:
        self.move("deposits", random.choice(self.accounts), _random_amount())

    @task(2)
    def withdraw(self) -> None:
        self.move("withdrawals", random.choice(self.accounts), _random_amount())

    @task(3)
    def transfer(self) -> None:
        source, destination = random.sample(self.accounts, 2)
        body = {
            "from_account_id": source,
            "to_account_id": destination,
            "amount": _random_amount(),
            "currency": "GBP",
        }
        reply = self.command("/v1/transfers", "[cmd] /v1/transfers", body)
        if reply is not None:
            _saw(source, reply["from"]["version"])
            _saw(destination, reply["to"]["version"])

    @task(1)
    def repeat_deposit(self) -> None:
        """The same key and body again: the stored reply, not a second deposit."""
        if self.last_deposit is None:
            return
        path, body, key = self.last_deposit
        headers = {**self.headers, "Idempotency-Key": key}
        with self.client.post(
            f"{TARGET.command_api}{path}",
            json=body,
            headers=headers,
            name="[cmd] /v1/accounts/{id}/deposits (replay)",
            catch_response=True,
        ) as response:
            if response.status_code != 201 or response.headers.get("Idempotent-Replayed") != "true":
                response.failure(f"{response.status_code} {_problem_code(response)}: not replayed")


class BatchTeller(_CommandUser):
    """Batches of 100 transfers among ten accounts of its own."""

    weight = 1
    wait_time = between(1.0, 3.0)
    accounts_count = ACCOUNTS_PER_BATCH_TELLER

    def on_start(self) -> None:
        super().on_start()
        items = [
            {
                "type": "deposit",
                "account_id": account_id,
                "amount": _amount(OPENING_DEPOSIT_MINOR * 10),
                "currency": "GBP",
            }
            for account_id in self.accounts
        ]
        self.batch(items)

    def batch(self, items: list[dict[str, Any]]) -> None:
        reply = self.command("/v1/batches", "[cmd] /v1/batches", {"items": items})
        if reply is None:
            return
        for result in reply["results"]:
            if result["status"] == "ok":
                for side in (result, result.get("from"), result.get("to")):
                    if side and "account_id" in side and "version" in side:
                        _saw(side["account_id"], side["version"])

    @task
    def transfers(self) -> None:
        items = []
        for _ in range(BATCH_TRANSFERS):
            source, destination = random.sample(self.accounts, 2)
            items.append(
                {
                    "type": "transfer",
                    "from_account_id": source,
                    "to_account_id": destination,
                    "amount": _random_amount(),
                    "currency": "GBP",
                }
            )
        self.batch(items)


class Viewer(FastHttpUser):
    """Reads what the tellers just wrote (min_version), statements and the overview."""

    weight = 3
    wait_time = between(0.5, 2.0)
    host = TARGET.query_api

    def on_start(self) -> None:
        token = TARGET.token("viewer", _subject("viewer"))
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, name: str, params: dict[str, Any] | None = None) -> None:
        query = f"?{urlencode(params)}" if params else ""
        with self.client.get(
            f"{TARGET.query_api}{path}{query}",
            headers=self.headers,
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code} {_problem_code(response)}")

    @task(4)
    def account_after_last_command(self) -> None:
        if not LATEST_VERSIONS:
            return
        account_id = random.choice(list(LATEST_VERSIONS))
        self.get(
            f"/v1/accounts/{account_id}",
            "[query] /v1/accounts/{id}?min_version",
            {"min_version": LATEST_VERSIONS[account_id]},
        )

    @task(2)
    def statement(self) -> None:
        if not LATEST_VERSIONS:
            return
        account_id = random.choice(list(LATEST_VERSIONS))
        self.get(
            f"/v1/accounts/{account_id}/transactions",
            "[query] /v1/accounts/{id}/transactions",
            {"limit": 50},
        )

    @task(1)
    def overview(self) -> None:
        self.get("/v1/stats/overview", "[query] /v1/stats/overview")


class RampThenStop(LoadTestShape):
    """Ramp to the peak over RAMP_S, hold, stop: `--headless` runs end by themselves."""

    use_common_options = True  # -u, -r and -t shape the run instead of being ignored

    def tick(self) -> tuple[int, float] | None:
        users = min(REQUESTED.get("users") or USERS_DEFAULT, USERS_MAX)
        run_time_s = min(REQUESTED.get("run_time_s") or RUN_TIME_S_DEFAULT, RUN_TIME_S_MAX)
        spawn_rate = REQUESTED.get("spawn_rate") or max(1.0, users / RAMP_S)
        if self.get_run_time() >= run_time_s:
            return None
        return users, spawn_rate
