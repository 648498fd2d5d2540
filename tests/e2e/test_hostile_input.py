"""Hostile input through every command route over real HTTP, against the whole system.

Hypothesis generates text (every Unicode category, lone surrogates sent as JSON escapes,
very long strings, decomposed and mixed normalisation forms) and amounts, and sends them
through every route that takes them. Each request is either refused with 422 (and then
stores nothing) or accepted, and then every projection applies it: nothing is
quarantined, the query API shows the text exactly as the edge normalised it, and the
event log still verifies and exports. All inputs are sent first; the system settles,
and the checks, the export and `vigil audit verify` run once.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Databases
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

EXAMPLES = 250
MOVING_ACCOUNTS = 6  # prepared with money; the first receives every transfer
SETTLE_S = 90.0
ACCEPTED = (200, 201)
# Refusals other than 422 that leave nothing behind either (funds, limits, states).
REFUSED = (409,)

HOSTILE: tuple[str, ...] = (
    "a\x00b",
    "\x00",
    "tab\there",
    "line\nbreak",
    "\x7f",
    "\x85next-line",
    "\u202eevil\u202c",
    "\u2066isolate\u2069",
    "\u200b",
    "\u200b\u200c\u200d\ufeff",
    "\u2060",
    " ",
    "   \t ",
    "",
    "e\u0301",  # decomposed é
    "\u00e9",
    "Å\u030a",
    "\ud800",
    "x\udfff",
    "\U0001f600",
    "\ue000",  # private use
    "\u0378",  # unassigned
    "A" * 10_000,
    "é" * 150,
    "\U0001f600" * 200,
)


def text_values() -> st.SearchStrategy[str]:
    visible = st.characters(categories=["L", "M", "N", "P", "S", "Zs"])
    return st.one_of(
        # About half what a person would write (accepted), half hostile.
        st.text(visible, min_size=1, max_size=30),
        st.text(visible, min_size=1, max_size=30).map(lambda t: unicodedata.normalize("NFD", t)),
        st.text(visible, min_size=1, max_size=20).map(lambda t: f"  {t}\r\n"),
        st.sampled_from(["Ada Lovelace", "Zoë Ødegård", "李小龙", "محمد", "invoice 7719 👍"]),
        st.sampled_from(HOSTILE),
        st.text(st.characters(), max_size=40),
        st.text(st.characters(categories=["Cc", "Cf", "Cs", "Co", "Cn", "Zs"]), max_size=8),
        st.text(st.characters(), min_size=100, max_size=3_000),
        st.text(st.characters(), max_size=40).map(lambda t: unicodedata.normalize("NFD", t)),
        st.builds(
            lambda a, b: a + unicodedata.normalize("NFD", b),
            st.text(max_size=10),
            st.text(st.characters(categories=["L", "M"]), max_size=10),
        ),
    )


def amount_values() -> st.SearchStrategy[str]:
    valid = st.integers(1, 2_000_000).map(lambda minor: f"{minor // 100}.{minor % 100:02d}")
    return st.one_of(
        valid,
        valid,
        valid,
        st.decimals(min_value=0, max_value=10**20, places=2, allow_nan=False).map(str),
        st.from_regex(r"-?[0-9]{1,22}(\.[0-9]{0,4})?", fullmatch=True),
        st.sampled_from(
            [
                "0.01",
                "0.00",
                "-1.00",
                "1e3",
                "NaN",
                "100000000.00",
                "100000000.01",
                "99999999999999999.00",
                "90000000000000000.00",
                " 1.00",
                "1,00",
                "\u0661.00",
            ]
        ),
    )


@dataclass
class Account:
    account_id: str
    version: int
    status: str = "open"


@dataclass
class Sent:
    """One accepted text, and where the query API shows it."""

    kind: str
    text: str
    where: str  # the account, case or transaction it belongs to


@dataclass
class Run:
    system: System
    client: httpx.Client
    accounts: list[Account]
    watched: list[Account]
    cases: dict[str, int]  # case id -> expected version
    listed: dict[str, bool] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def post(self, path: str, body: Any, role: str = "teller") -> httpx.Response:
        # ensure_ascii: lone surrogates travel as JSON escapes, as an attacker would send
        # them (they cannot be encoded in UTF-8 at all).
        response = self.client.post(
            f"{self.system.command.url}{path}",
            content=json.dumps(body),
            headers={**self.system.headers(role), "Content-Type": "application/json"},
        )
        assert response.status_code in (*ACCEPTED, *REFUSED, 422, 403), response.text
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
        self.statuses[response.status_code] += 1
        return response

    def query(self, path: str, role: str = "auditor") -> Any:
        response = self.client.get(
            f"{self.system.query.url}{path}", headers=self.system.headers(role)
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def run(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    with (
        running_system(databases, tmp_path_factory.mktemp("hostile")) as system,
        httpx.Client(timeout=30) as client,
    ):
        yield prepared(system, client)


def prepared(system: System, client: httpx.Client) -> Run:
    """Accounts with money, accounts to watch, and open cases to comment on."""
    run = Run(system, client, [], [], {})
    for index in range(8):
        reply = run.post(
            "/v1/accounts",
            {"owner": f"hostile-{index}", "branch": "001", "currency": "GBP"},
            role="admin",
        ).json()
        account = Account(reply["account_id"], 1)
        # A large deposit raises an alert, whose case the notes go to.
        amount = "60000.00" if index < 2 else "5000.00"
        deposited = run.post(
            f"/v1/accounts/{account.account_id}/deposits", {"amount": amount, "currency": "GBP"}
        )
        assert deposited.status_code == 201, deposited.text
        account.version = 2
        (run.accounts if index < MOVING_ACCOUNTS else run.watched).append(account)
    for account in run.accounts[:2]:

        def case_of(account_id: str = account.account_id) -> str | None:
            items = run.query(f"/v1/cases?account_id={account_id}", role="compliance")["items"]
            return items[0]["case_id"] if items else None

        case_id = eventually(case_of, 60, "a case for the large deposit", system)
        run.cases[case_id] = steps_taken(run, case_id)
    return run


def steps_taken(run: Run, case_id: str) -> int:
    """The case's version less the alerts that joined it: the steps people took (later
    hits of its rule on its account join it on their own, as the case opener routes them)."""
    case = run.query(f"/v1/cases/{case_id}", role="compliance")
    joined = sum(1 for step in case["history"] if step["event_type"] == "CaseAlertJoined")
    return int(case["version"]) - joined


def send_one(run: Run, data: st.DataObject) -> None:
    kind = data.draw(
        st.sampled_from(
            ["open", "deposit", "withdraw", "transfer", "batch", "status", "note", "watch"]
        )
    )
    text = data.draw(text_values(), label="text")
    amount = data.draw(amount_values(), label="amount")
    # From the prepared accounts only: what Hypothesis draws from may not grow as it runs.
    account = run.accounts[data.draw(st.integers(1, MOVING_ACCOUNTS - 1), label="account")]
    if kind == "open":
        body = {"owner": text, "branch": "001", "currency": "GBP", "overdraft_limit": amount}
        response = run.post("/v1/accounts", body, role="admin")
        if response.status_code == 201:
            reply = response.json()
            run.accounts.append(Account(reply["account_id"], 1))
            run.sent.append(Sent("owner", text, reply["account_id"]))
    elif kind in ("deposit", "withdraw"):
        route = "deposits" if kind == "deposit" else "withdrawals"
        body = {"amount": amount, "currency": "GBP", "reference": text}
        response = run.post(f"/v1/accounts/{account.account_id}/{route}", body)
        if response.status_code == 201:
            account.version += 1
            reference = response.json()["transaction_id"]
            run.sent.append(Sent("reference", text, f"{account.account_id}/{reference}"))
    elif kind == "transfer":
        send_transfer(run, account, text, amount)
    elif kind == "batch":
        send_batch(run, account, text, amount)
    elif kind == "status":
        send_status(run, account, text)
    elif kind == "note":
        send_note(run, data, text)
    else:
        send_watch(run, data, text)


def send_transfer(run: Run, source: Account, text: str, amount: str) -> None:
    target = run.accounts[0]
    body = {
        "from_account_id": source.account_id,
        "to_account_id": target.account_id,
        "amount": amount,
        "currency": "GBP",
        "reference": text,
    }
    response = run.post("/v1/transfers", body)
    if response.status_code == 201:
        source.version += 1
        target.version += 1
        reference = response.json()["transaction_id"]
        run.sent.append(Sent("reference", text, f"{source.account_id}/{reference}"))


def send_batch(run: Run, account: Account, text: str, amount: str) -> None:
    items = [
        {"type": "deposit", "account_id": account.account_id, "amount": amount,
         "currency": "GBP", "reference": text},
        {"type": "deposit", "account_id": account.account_id, "amount": "0.01",
         "currency": "GBP", "reference": "plain"},
    ]  # fmt: skip
    response = run.post("/v1/batches", {"items": items})
    if response.status_code != 200:
        return
    for result in response.json()["results"]:
        if result["status"] == "ok":
            account.version += 1
            if result["index"] == 0:
                where = f"{account.account_id}/{result['transaction_id']}"
                run.sent.append(Sent("reference", text, where))


def send_status(run: Run, account: Account, text: str) -> None:
    action = "freeze" if account.status == "open" else "unfreeze"
    response = run.post(f"/v1/accounts/{account.account_id}/{action}", {"reason": text}, "admin")
    if response.status_code == 200:
        account.version += 1
        account.status = "frozen" if action == "freeze" else "open"
        run.sent.append(Sent("reason", text, f"{account.account_id}/{account.version}"))


def send_note(run: Run, data: st.DataObject, text: str) -> None:
    case_id = data.draw(st.sampled_from(sorted(run.cases)), label="case")
    if data.draw(st.booleans(), label="assign"):
        body: dict[str, Any] = {"assignee": text}
        response = run.post(f"/v1/cases/{case_id}/assign", body, "compliance")
        kind = "assignee"
    else:
        response = run.post(f"/v1/cases/{case_id}/comment", {"note": text}, "compliance")
        kind = "note"
    if response.status_code == 200:
        run.cases[case_id] += 1
        run.sent.append(Sent(kind, text, f"{case_id}/{run.cases[case_id]}"))


def send_watch(run: Run, data: st.DataObject, text: str) -> None:
    account = data.draw(st.sampled_from(run.watched), label="watched")
    if run.listed.get(account.account_id):
        response = run.client.request(
            "DELETE",
            f"{run.system.command.url}/v1/watchlist/{account.account_id}",
            content=json.dumps({"reason": text}),
            headers={**run.system.headers("compliance"), "Content-Type": "application/json"},
        )
        run.statuses[response.status_code] += 1
    else:
        body = {"account_id": account.account_id, "reason": text}
        response = run.post("/v1/watchlist", body, "compliance")
    assert response.status_code in (*ACCEPTED, 422), response.text
    if response.status_code in ACCEPTED:
        run.listed[account.account_id] = not run.listed.get(account.account_id, False)
        run.sent.append(Sent("watch", text, account.account_id))


def normalised(kind: str, text: str) -> str:
    """What the edge stores for an accepted text: NFC, trimmed (notes: CR LF as LF)."""
    if kind == "note":
        text = text.replace("\r\n", "\n")
    return unicodedata.normalize("NFC", text).strip()


def test_hostile_input_is_refused_or_applied_everywhere_and_the_log_verifies(
    run: Run, tmp_path: Path
) -> None:
    started = datetime.now(UTC) - timedelta(minutes=1)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def send(data: st.DataObject) -> None:
        send_one(run, data)

    send()
    assert run.statuses[422] > 0, run.statuses  # the hostile half was refused
    assert run.sent, run.statuses  # and the rest was accepted

    settle(run)
    check_versions(run)
    check_texts(run)
    check_audit(run, started, tmp_path)


def settle(run: Run) -> None:
    def caught_up() -> list[Any] | None:
        items = run.query("/v1/projections", role="admin")["items"]
        return items if all(p["lag_events"] == 0 for p in items) else None

    projections = eventually(caught_up, SETTLE_S, "every projection caught up", run.system)
    assert all(p["quarantined"] == 0 for p in projections), projections


def check_versions(run: Run) -> None:
    """Refused requests stored nothing, accepted ones every event: each account and case
    is at exactly the version the accepted replies add up to."""
    for account in run.accounts + run.watched:
        view = run.query(f"/v1/accounts/{account.account_id}?min_version={account.version}")
        assert view["projected_version"] == account.version, account
        history = run.query(f"/v1/audit/accounts/{account.account_id}/events?limit=500")
        assert len(history["items"]) == account.version, account
    for case_id, version in run.cases.items():
        assert steps_taken(run, case_id) == version


def check_texts(run: Run) -> None:
    """Every accepted text, shown by the query API exactly as normalised at the edge."""
    last_reason: dict[str, str] = {}
    for sent in run.sent:
        expected = normalised(sent.kind, sent.text)
        assert unicodedata.is_normalized("NFC", expected)
        if sent.kind == "watch":
            last_reason[sent.where] = expected
        else:
            assert shown(run, sent) == expected, sent
    reasons = {
        entry["account_id"]: entry["reason"]
        for listed in ("true", "false")
        for entry in run.query(f"/v1/watchlist?listed={listed}&limit=500", "compliance")["items"]
    }
    for account_id, expected in last_reason.items():
        assert reasons[account_id] == expected, account_id


def shown(run: Run, sent: Sent) -> str | None:
    if sent.kind == "owner":
        return str(run.query(f"/v1/accounts/{sent.where}")["owner"])
    if sent.kind == "reference":
        account_id, transaction_id = sent.where.split("/")
        lines = run.query(f"/v1/accounts/{account_id}/transactions?limit=500")["items"]
        [line] = [x for x in lines if x["transaction_id"] == transaction_id]
        return str(line["reference"])
    if sent.kind == "reason":
        account_id, version = sent.where.split("/")
        events = run.query(f"/v1/audit/accounts/{account_id}/events?limit=500")["items"]
        [event] = [e for e in events if e["version"] == int(version)]
        return str(event["payload"]["reason"])
    if sent.kind in ("note", "assignee"):
        case_id, version = sent.where.split("/")
        history = run.query(f"/v1/cases/{case_id}", role="compliance")["history"]
        [step] = [s for s in history if s["version"] == int(version)]
        return str(step["note"] if sent.kind == "note" else step["details"]["assignee"])
    raise AssertionError(f"no query shows {sent.kind}")


def check_audit(run: Run, started: datetime, tmp_path: Path) -> None:
    verified = run.system.vigil("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    until = datetime.now(UTC) + timedelta(minutes=1)
    out = tmp_path / "export"
    exported = run.system.vigil(
        "audit", "export", "--from", iso(started), "--to", iso(until), "--out", str(out)
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    checked = run.system.vigil("audit", "verify-export", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = (out / "events.jsonl").read_text(encoding="utf-8").splitlines()
    payload_texts = {
        value
        for line in lines
        for value in json.loads(line).get("payload", {}).values()
        if isinstance(value, str)
    }
    for sent in run.sent:
        if sent.kind in ("owner", "reference", "reason"):
            assert normalised(sent.kind, sent.text) in payload_texts, sent


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
