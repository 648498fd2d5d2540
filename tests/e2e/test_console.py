"""The console in a real browser (Debian's headless Chromium, driven through its own
chromedriver; nothing is downloaded), against the whole system as real processes.

Each page is saved as a screenshot under var/console-shots/ at 1280 and 390 px wide.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import ROOT, Databases
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = ROOT / "var" / "console-shots"
WAIT_S = 60.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def system(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(databases, tmp_path_factory.mktemp("console")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(
            f"the console's browser tests need Debian's chromium and chromium-driver "
            f"({', '.join(missing)} missing): apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def signed_in(cookie: str) -> httpx.Client:
    """A plain HTTP client holding the browser's console session."""
    return httpx.Client(timeout=10, cookies={"vigil_console": cookie})


def sign_in(browser: Any, system: System, role: str, subject: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{system.query.url}/console/login")
    token = system.headers(role, subject)["Authorization"].removeprefix("Bearer ")
    browser.find_element(By.ID, "token").send_keys(token)
    click_through(browser, "button[type=submit]")
    until(lambda: True if browser.get_cookie("vigil_console") else None, "the session cookie", 10)


def shoot(browser: Any, name: str) -> None:
    """The page as it is, at desktop and phone widths."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        browser.set_window_size(width, 900)
        browser.save_screenshot(str(SHOTS / f"{name}-{width}.png"))
    browser.set_window_size(1280, 900)


def until(probe: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout_s:.0f} s")
        time.sleep(0.3)


def click_through(browser: Any, selector: str, *, confirm: bool = False) -> None:
    """Click a button and wait for the page it leads to (a click does not wait for the
    form's post and its redirect); `confirm`: accept the confirmation it asks first."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, selector).click()
    if confirm:
        browser.switch_to.alert.accept()

    def left(_: Any) -> bool:
        """The old page is gone: stale, or (asked mid-navigation) Chromium's inspector no
        longer finds its node in the document."""
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in (error.msg or ""):
                return True
            raise
        return False

    WebDriverWait(browser, 30).until(left)


def submit(browser: Any, action: str, **fields: str) -> None:
    """Fill and submit a case action's form, accepting its confirmation."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    form = browser.find_element(By.CSS_SELECTOR, f"form[data-action='{action}']")
    for name, value in fields.items():
        element = form.find_element(By.NAME, name)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.send_keys(value)
    click_through(browser, f"form[data-action='{action}'] button[type=submit]", confirm=True)


def post(system: System, http: httpx.Client, path: str, body: dict[str, Any], role: str) -> Any:
    reply = http.post(f"{system.command.url}{path}", json=body, headers=system.headers(role))
    assert reply.status_code in (200, 201), reply.text
    return reply.json()


def open_account(system: System, http: httpx.Client, branch: str = "001", owner: str = "") -> str:
    body = {
        "owner": owner or f"Console {uuid.uuid4().hex[:6]}",
        "branch": branch,
        "currency": "GBP",
    }
    return str(post(system, http, "/v1/accounts", body, "admin")["account_id"])


def deposit(system: System, http: httpx.Client, account_id: str, amount: str) -> Any:
    return post(
        system,
        http,
        f"/v1/accounts/{account_id}/deposits",
        {"amount": amount, "currency": "GBP", "channel": "cash"},
        "teller",
    )


def test_a_compliance_analyst_takes_the_next_case_reads_the_evidence_and_closes_it(
    system: System, http: httpx.Client, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    account_id = open_account(system, http)
    for _ in range(3):  # structuring: three cash deposits just under the reporting threshold
        deposit(system, http, account_id, "9500.00")

    def queued() -> str | None:
        reply = http.get(
            f"{system.query.url}/v1/cases",
            params={"account_id": account_id},
            headers=system.headers("compliance"),
        )
        items = reply.json()["items"]
        return items[0]["case_id"] if items else None

    case_id = eventually(queued, WAIT_S, "the structuring case", system)
    sign_in(browser, system, "compliance", "olivia")
    browser.get(f"{system.query.url}/console/cases?view=unassigned")
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-case='{case_id}']")
    assert "structuring" in row.text
    shoot(browser, "cases")
    click_through(browser, "button[data-next-case]")
    assert browser.current_url.startswith(f"{system.query.url}/console/cases/{case_id}")
    assert "assigned to you" in browser.find_element(By.CSS_SELECTOR, "[data-flash]").text
    verdict = browser.find_element(By.CSS_SELECTOR, "[data-verdict]").text
    assert "reproduced" in verdict
    assert "NOT" not in verdict
    shoot(browser, "case")
    submit(browser, "comment", note="called the branch: the customer is a market trader")
    assert "comment: done" in browser.find_element(By.CSS_SELECTOR, "[data-flash]").text
    submit(browser, "close", resolution="no_action", note="explained by market takings")
    assert "close: done" in browser.find_element(By.CSS_SELECTOR, "[data-flash]").text

    def steps() -> list[tuple[str, str]] | None:
        browser.get(f"{system.query.url}/console/cases/{case_id}")
        rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-step]")
        found = [
            (r.get_attribute("data-step"), r.find_element(By.CSS_SELECTOR, "[data-actor]").text)
            for r in rows
        ]
        return found if ("CaseClosed", "olivia") in found else None

    history = until(steps, "the closed case's history")
    assert history[1:] == [
        ("CaseAssigned", "olivia"),
        ("CaseCommented", "olivia"),
        ("CaseClosed", "olivia"),
    ]


def test_a_teller_sees_only_their_branch_and_no_compliance_or_audit_page(
    system: System, http: httpx.Client, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    own = open_account(system, http, "001", "Branch One Customer")
    other = open_account(system, http, "002", "Branch Two Customer")
    sign_in(browser, system, "teller")
    browser.get(f"{system.query.url}/console/accounts")
    listed = {
        e.get_attribute("data-account")
        for e in browser.find_elements(By.CSS_SELECTOR, "tr[data-account]")
    }
    assert own in listed
    assert other not in listed
    menu = browser.find_element(By.TAG_NAME, "nav").text
    assert "Compliance" not in menu
    assert "Audit" not in menu
    shoot(browser, "accounts")
    cookie = browser.get_cookie("vigil_console")["value"]
    for path in ("/console/cases", "/console/audit", f"/console/accounts/{other}"):
        reply = signed_in(cookie).get(f"{system.query.url}{path}")
        assert reply.status_code == 403, (path, reply.status_code)
        assert 'data-refusal="403"' in reply.text


def test_an_auditor_sees_an_account_as_of_a_moment_runs_verify_and_downloads_an_export(
    system: System, http: httpx.Client, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    account_id = open_account(system, http)
    deposit(system, http, account_id, "100.00")
    time.sleep(1.1)
    between = datetime.now(UTC).replace(microsecond=0)
    time.sleep(1.1)
    last = deposit(system, http, account_id, "50.00")
    http.get(
        f"{system.query.url}/v1/accounts/{account_id}",
        params={"min_version": last["version"]},
        headers=system.headers("auditor"),
    )
    sign_in(browser, system, "auditor")
    as_of = between.strftime("%Y-%m-%dT%H:%M:%S")
    browser.get(f"{system.query.url}/console/accounts/{account_id}?as_of={as_of}")
    then = browser.find_element(By.CSS_SELECTOR, "[data-field='as_of_balance']").text
    assert then == "100.00 GBP"
    now = browser.find_element(By.CSS_SELECTOR, "[data-field='balance']").text
    assert now == "150.00 GBP"
    assert browser.find_elements(By.CSS_SELECTOR, "td.hash"), "the event history with hashes"
    shoot(browser, "account")
    browser.get(f"{system.query.url}/console/audit")
    click_through(browser, "button[data-run-verify]", confirm=True)
    assert "verify: clean" in browser.find_element(By.CSS_SELECTOR, "[data-flash]").text
    start = (datetime.now(UTC) - timedelta(days=1)).strftime("%m%d%Y\t%I%M%S%p")
    end = (datetime.now(UTC) + timedelta(days=1)).strftime("%m%d%Y\t%I%M%S%p")
    browser.find_element(By.ID, "from").send_keys(start)
    browser.find_element(By.ID, "to").send_keys(end)
    click_through(browser, "button[data-make-export]", confirm=True)
    assert "export made" in browser.find_element(By.CSS_SELECTOR, "[data-flash]").text
    check = browser.find_element(By.CSS_SELECTOR, "[data-export-check]").text
    assert check == "signature and files verify"
    link = browser.find_element(By.CSS_SELECTOR, "a[data-download]").get_attribute("href")
    shoot(browser, "audit")
    cookie = browser.get_cookie("vigil_console")["value"]
    archive = signed_in(cookie).get(link)
    assert archive.status_code == 200
    assert archive.content[:2] == b"\x1f\x8b", "a gzip archive"


def test_the_overview_figures_change_when_money_moves_without_reloading(
    system: System, http: httpx.Client, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    source, target = open_account(system, http), open_account(system, http)
    deposit(system, http, source, "100.00")
    sign_in(browser, system, "viewer")
    browser.get(f"{system.query.url}/console")
    field = "[data-field='transfers_last_hour']"
    until(
        lambda: (
            True if "live" in browser.find_element(By.CSS_SELECTOR, "[data-status]").text else None
        ),
        "the overview's first refresh",
    )
    before = int(browser.find_element(By.CSS_SELECTOR, field).text)
    shoot(browser, "overview")
    for _ in range(2):
        post(
            system,
            http,
            "/v1/transfers",
            {
                "from_account_id": source,
                "to_account_id": target,
                "amount": "1.00",
                "currency": "GBP",
            },
            "teller",
        )
    marker = browser.execute_script("document.body.dataset.unreloaded = 'yes'; return 1")
    assert marker == 1
    until(
        lambda: (
            True if int(browser.find_element(By.CSS_SELECTOR, field).text) >= before + 2 else None
        ),
        "the transfers figure to move",
    )
    assert browser.execute_script("return document.body.dataset.unreloaded") == "yes"
    live = browser.find_element(By.CSS_SELECTOR, "[data-field='live_rate']").text
    assert float(live) >= 0, live


def test_a_form_without_its_csrf_token_or_from_another_origin_changes_nothing(
    system: System, http: httpx.Client, browser: Any
) -> None:
    account_id = open_account(system, http)
    for _ in range(3):
        deposit(system, http, account_id, "9500.00")

    def queued() -> str | None:
        reply = http.get(
            f"{system.query.url}/v1/cases",
            params={"account_id": account_id},
            headers=system.headers("compliance"),
        )
        items = reply.json()["items"]
        return items[0]["case_id"] if items else None

    case_id = eventually(queued, WAIT_S, "a case to attack", system)
    sign_in(browser, system, "compliance", "mallory-target")
    session = signed_in(browser.get_cookie("vigil_console")["value"])
    page = session.get(f"{system.query.url}/console/cases/{case_id}").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    url = f"{system.query.url}/console/cases/{case_id}/comment"
    forged = session.post(url, data={"note": "forged"})
    assert forged.status_code == 403
    elsewhere = session.post(
        url,
        data={"note": "forged", "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert elsewhere.status_code == 403
    wrong = session.post(url, data={"note": "forged", "csrf": "0" * 64})
    assert wrong.status_code == 403
    time.sleep(1)
    case = http.get(
        f"{system.query.url}/v1/cases/{case_id}", headers=system.headers("compliance")
    ).json()
    assert [s["event_type"] for s in case["history"]] == ["CaseOpened"], "nothing changed"
    # The same form, as the console sends it, does change the case.
    sent = session.post(url, data={"note": "genuine", "csrf": csrf})
    assert sent.status_code == 303, sent.text
    response = session.get(f"{system.query.url}/console/cases/{case_id}")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy


class AuthorizationServer:
    """A small authorization server for the test: `/authorize` sends the browser straight
    back with a code (remembering the PKCE challenge), `/token` gives a token signed for
    this system only when the verifier matches the challenge."""

    def __init__(self) -> None:
        import hashlib
        import threading
        from base64 import urlsafe_b64encode
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlencode, urlsplit

        self.codes: dict[str, str] = {}  # code -> challenge
        self.exchanges: list[bool] = []
        self.token = ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                assert query["code_challenge_method"] == "S256"
                code = uuid.uuid4().hex
                server.codes[code] = query["code_challenge"]
                back = urlencode({"code": code, "state": query["state"]})
                self.send_response(303)
                self.send_header("Location", f"{query['redirect_uri']}?{back}")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                challenge = server.codes.pop(form.get("code", ""), None)
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                matches = challenge == urlsafe_b64encode(digest).decode().rstrip("=")
                server.exchanges.append(matches)
                body = f'{{"access_token": "{server.token}", "token_type": "Bearer"}}'
                self.send_response(200 if matches else 400)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode() if matches else b'{"error": "invalid_grant"}')

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def provider() -> Iterator[AuthorizationServer]:
    server = AuthorizationServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def provider_system(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, provider: AuthorizationServer
) -> Iterator[System]:
    with running_system(
        databases,
        tmp_path_factory.mktemp("console-idp"),
        processes=(),
        console_authorize_url=f"{provider.url}/authorize",
        console_token_url=f"{provider.url}/token",
        console_client_id="vigil-console-test",
    ) as running:
        yield running


def test_sign_in_through_the_identity_provider_with_pkce(
    provider_system: System, provider: AuthorizationServer, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    system = provider_system
    provider.token = system.headers("compliance", "ida")["Authorization"].removeprefix("Bearer ")
    browser.delete_all_cookies()
    browser.get(f"{system.query.url}/console/login")
    click_through(browser, "a[data-provider-sign-in]")
    until(
        lambda: True if browser.current_url.rstrip("/").endswith("/console") else None,
        "the console after the provider's redirect",
    )
    assert "ida (compliance)" in browser.find_element(By.CSS_SELECTOR, "[data-who]").text
    assert provider.exchanges == [True], "the code was exchanged with the matching verifier"
    shoot(browser, "login-provider")
    # A callback with a state that is not ours signs nobody in.
    browser.delete_all_cookies()
    browser.get(f"{system.query.url}/console/login/callback?code=x&state=forged")
    assert (
        "did not come back as it left"
        in browser.find_element(By.CSS_SELECTOR, "[data-failed]").text
    )
    assert browser.get_cookie("vigil_console") is None
