"""The web console in a real Chromium: a new user's whole journey (sign up, a key, a call
with the openai SDK, its usage and exact cost, the Playground streaming, revoking), the
Models page against /v1/models, and screenshots of every page at desktop and phone width
with no horizontal scrolling on a phone."""

import itertools
import re

import openai
import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from inferegator.store.store import Store
from tests.gateway_fixtures import launch_gateway, sdk
from tests.support.browser import DESKTOP, PHONE, Browser, screenshots_dir
from tests.support.console_client import PASSWORD
from tests.support.processes import Simulator

MODEL = "acme/sim-chat"
MODELS = {  # id: (prompt, completion, cached prompt) USD per 1M tokens
    MODEL: (1.0, 2.0, 0.5),
    "acme/sim-mini": (0.15, 0.6, 0.075),
    "acme/sim-large": (3.0, 15.0, 0.3),
}
_emails = itertools.count()


def console_yaml(sim) -> str:
    # The product's default limits (60 requests, 100,000 tokens a minute), as users see them.
    lines = ["auth:", "  key_cache_ttl_s: 0", "models:"]
    for model_id, (prompt, completion, cached) in MODELS.items():
        lines += [f"  - id: {model_id}", "    owned_by: acme",
                  f"    pricing: {{prompt: {prompt}, completion: {completion}, "
                  f"cached_prompt: {cached}}}",
                  "    capabilities: [chat, completions, streaming]", "    backends:",
                  f"      - {{type: sglang, url: '{sim.url}', model: sim-model}}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    # Tokens come one by one, 40 ms apart, so that streaming is visible in the page.
    sim = Simulator("--decode-ms-per-token", "40", "--output-tokens-min", "12",
                    "--output-tokens-max", "20")
    server = launch_gateway(tmp_path_factory.mktemp("console-browser"), console_yaml(sim))
    server.console = server.url + "/console"
    yield server
    server.stop()
    sim.stop()


@pytest.fixture
def browser():
    with Browser(DESKTOP) as started:
        yield started


def new_email(tag: str) -> str:
    return f"{tag}-{next(_emails)}@example.com"


def listed_pricing(gateway) -> dict:
    listing = requests.get(gateway.url + "/v1/models", timeout=30,
                           headers={"Authorization": f"Bearer {gateway.key}"})
    assert listing.status_code == 200
    return {m["id"]: m["pricing"] for m in listing.json()["data"]}


def cost_usd(pricing: dict, prompt: int, completion: int, cached: int) -> float:
    """What a request costs: USD per 1M tokens, cached prompt tokens at their own price."""
    return ((prompt - cached) * pricing["prompt"] + cached * pricing["cached_prompt"]
            + completion * pricing["completion"]) / 1_000_000


def sign_up(browser: Browser, gateway, email: str) -> None:
    browser.get(gateway.console + "/signup")
    browser.fill("#email", email)
    browser.fill("#password", PASSWORD)
    browser.submit("main form")
    assert browser.path == "/console/keys", browser.text("main")
    assert email in browser.text("header")


def create_key(browser: Browser, gateway, name: str) -> tuple[str, str]:
    """Create a key on the API Keys page: (its secret, as shown once; its id)."""
    browser.get(gateway.console + "/keys")
    before = {row.get_attribute("data-key-id") for row in
              browser.find_all("table#keys tr[data-key-id]")}
    browser.fill("#key-name", name)
    browser.submit("form#create-key")
    secret = browser.text("code#new-key").strip()
    assert re.fullmatch(r"sk-inf-[A-Za-z0-9_-]{20,}", secret), secret
    browser.get(gateway.console + "/keys")
    (key_id,) = {row.get_attribute("data-key-id") for row in
                 browser.find_all("table#keys tr[data-key-id]")} - before
    return secret, key_id


def usage_totals(browser: Browser, gateway, requests_seen: int) -> dict:
    """The Usage page's totals once the ledger holds requests_seen requests (reloading
    until its flush shows them)."""
    browser.get(gateway.console + "/usage")

    def flushed(driver):
        totals = driver.find_element(By.ID, "usage-totals")
        if totals.get_attribute("data-requests") == str(requests_seen):
            return {name: totals.get_attribute(f"data-{name}") for name in (
                "requests", "prompt-tokens", "completion-tokens", "cached-tokens", "cost-usd")}
        driver.refresh()
        return False

    return browser.wait(flushed)


WATCH_ANSWER = """
window.answerLengths = [];
const log = document.getElementById('pg-log');
new MutationObserver(() => {
  const answer = document.getElementById('pg-answer');
  if (answer) window.answerLengths.push(answer.textContent.length);
}).observe(log, {subtree: true, childList: true, characterData: true});
"""


def playground_answer(browser: Browser, gateway, secret: str, prompt: str) -> dict:
    """Send prompt from the Playground and wait for the answer's stats; what was seen."""
    browser.get(gateway.console + "/playground")
    Select(browser.find("select#pg-model")).select_by_value(MODEL)
    browser.fill("input#pg-key", secret)
    browser.fill("textarea#pg-prompt", prompt)
    browser.driver.execute_script(WATCH_ANSWER)
    browser.find("button#pg-send").click()
    browser.wait(lambda d: d.find_element(By.ID, "pg-tokens").text.strip() not in ("", "—"))
    return {"lengths": browser.driver.execute_script("return window.answerLengths"),
            "answer": browser.text("#pg-answer"), "ttft": browser.text("dd#pg-ttft"),
            "tokens": browser.text("dd#pg-tokens"), "cost": browser.text("dd#pg-cost"),
            "status": browser.text("p#pg-status")}


def test_a_new_users_journey_through_the_console(browser, gateway):
    pricing = listed_pricing(gateway)[MODEL]
    email = new_email("journey")
    sign_up(browser, gateway, email)

    browser.fill("#key-name", "journey")
    browser.submit("form#create-key")
    secret = browser.text("code#new-key").strip()
    assert secret.startswith("sk-inf-")
    assert browser.find("button#copy-key").is_displayed()
    python = browser.text("pre#python-snippet")
    assert secret in python and f'"{gateway.url}/v1"' in python
    assert secret in browser.text("pre#curl-snippet")
    browser.get(gateway.console + "/keys")
    assert secret not in browser.driver.page_source  # shown once
    (row,) = browser.find_all("table#keys tr[data-key-id]")
    key_id = row.get_attribute("data-key-id")

    client = sdk(gateway, secret)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from the journey"}])
    usage = reply.usage
    cached = (usage.prompt_tokens_details.cached_tokens or 0) \
        if usage.prompt_tokens_details else 0
    first_cost = cost_usd(pricing, usage.prompt_tokens, usage.completion_tokens, cached)
    totals = usage_totals(browser, gateway, 1)
    assert totals == {"requests": "1", "prompt-tokens": str(usage.prompt_tokens),
                      "completion-tokens": str(usage.completion_tokens),
                      "cached-tokens": str(cached), "cost-usd": totals["cost-usd"]}
    assert float(totals["cost-usd"]) == round(first_cost, 10) > 0  # the ledger's precision
    model_row = browser.find(f'#usage-by-model tr[data-model="{MODEL}"]')
    assert model_row.find_element(By.CSS_SELECTOR, "td").text == "1"
    assert browser.find(f'#usage-by-key tr[data-key-id="{key_id}"]').is_displayed()
    assert browser.find("#usage-by-day tbody tr").is_displayed()
    assert browser.find("a#usage-csv").get_attribute("href").endswith("/console/usage.csv")

    seen = playground_answer(browser, gateway, secret, "Tell me something, slowly.")
    lengths = seen["lengths"]
    assert lengths == sorted(lengths), lengths  # the answer only grows
    steps = sorted(set(n for n in lengths if n > 0))
    assert len(steps) >= 3, f"the answer did not stream: lengths seen {lengths}"
    assert steps[-1] == len(seen["answer"]) > 0
    assert re.fullmatch(r"\d+ ms", seen["ttft"]), seen
    assert seen["status"].startswith(("Done", "Stopped at the token limit")), seen
    match = re.match(r"([\d,]+) prompt \+ ([\d,]+) completion = ([\d,]+)(?: \(([\d,]+) cached\))?",
                     seen["tokens"])
    assert match, seen["tokens"]
    prompt, completion, total, pg_cached = (int((g or "0").replace(",", ""))
                                            for g in match.groups())
    assert prompt + completion == total and completion >= 3
    pg_cost = float(browser.find("dd#pg-cost").get_attribute("data-usd"))
    assert pg_cost == pytest.approx(cost_usd(pricing, prompt, completion, pg_cached), rel=1e-9)
    assert seen["cost"].startswith("$")
    totals = usage_totals(browser, gateway, 2)  # the Playground's call is in the ledger too
    assert int(totals["completion-tokens"]) == usage.completion_tokens + completion
    assert float(totals["cost-usd"]) == pytest.approx(first_cost + pg_cost, rel=1e-9)

    browser.get(gateway.console + "/keys")
    browser.click_and_load(f'table#keys tr[data-key-id="{key_id}"] a.revoke')
    assert browser.path == f"/console/keys/{key_id}/revoke"
    browser.submit("form#revoke-key")
    assert browser.path == "/console/keys?revoked=1"
    assert "revoked" in browser.text(f'table#keys tr[data-key-id="{key_id}"]')
    with pytest.raises(openai.AuthenticationError):  # auth.key_cache_ttl_s: 0
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_the_models_page_lists_what_v1_models_lists(browser, gateway):
    listed = listed_pricing(gateway)
    assert set(listed) == set(MODELS)
    browser.get(gateway.console + "/models")  # public: no sign-in
    shown = {}
    for row in browser.find_all("table#models tr[data-model-id]"):
        cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        visible = [float(text.lstrip("$").replace(",", "")) for text in cells[2:5]]
        data = [float(row.get_attribute(f"data-{n}")) for n in ("prompt", "completion",
                                                                "cached")]
        assert visible == data, (row.get_attribute("data-model-id"), cells)
        shown[row.get_attribute("data-model-id")] = tuple(data)
    assert shown == {model_id: (p["prompt"], p["completion"], p["cached_prompt"])
                     for model_id, p in listed.items()}
    assert shown == MODELS


class Shots:
    """Screenshots of pages at desktop and phone width, horizontal overflow on a phone, and
    accessibility problems a page's markup shows."""

    def __init__(self, browser: Browser):
        self.browser = browser
        self.folder = screenshots_dir()
        self.taken: list[str] = []
        self.overflowing: dict[str, list[str]] = {}
        self.inaccessible: dict[str, list[str]] = {}

    def take(self, name: str) -> None:
        browser = self.browser
        problems = browser.accessibility_problems()
        if problems:
            self.inaccessible[name] = problems
        for path in browser.screenshots(name, self.folder):
            assert path.stat().st_size > 1000, path
        browser.set_size(*PHONE)
        if browser.horizontal_overflow() > 1:
            self.overflowing[name] = browser.overflowing_elements()
        browser.set_size(*DESKTOP)
        self.taken.append(name)


def test_screenshots_of_every_page_fit_a_phone_and_label_every_control(browser, gateway):
    shots = Shots(browser)
    console = gateway.console
    for name, path in (("start", ""), ("signup", "/signup"), ("signin", "/signin"),
                       ("models", "/models"), ("docs", "/docs")):
        browser.get(console + path)
        shots.take(name)
    browser.get(console + "/no-such-page")
    assert "Not found" in browser.text("h1")
    shots.take("error-404")

    email = new_email("shots")
    sign_up(browser, gateway, email)
    shots.take("keys-empty")
    browser.fill("#key-name", "screenshots")
    browser.submit("form#create-key")
    secret = browser.text("code#new-key").strip()
    shots.take("key-created")
    _, second_id = create_key(browser, gateway, "a second key with a rather long name")
    sdk(gateway, secret).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Fill the usage page"}])
    browser.get(console + "/keys")
    shots.take("keys")
    browser.get(console + f"/keys/{second_id}/revoke")
    assert browser.find("form#revoke-key").is_displayed()
    shots.take("revoke-confirm")
    usage_totals(browser, gateway, 1)
    shots.take("usage")
    seen = playground_answer(browser, gateway, secret, "A short answer for the screenshot")
    assert seen["answer"]
    shots.take("playground")
    browser.get(console + "/account")
    shots.take("account")

    store = Store(gateway.storage)
    try:
        user = next(u for u in store.accounts.list_users() if u["email"] == email)
        store.accounts.set_user_role(user["id"], "admin")
    finally:
        store.db.close()
    browser.get(console + "/admin/users")
    assert browser.find(f'table#users tr[data-user-id="{user["id"]}"]').is_displayed()
    shots.take("admin-users")
    browser.get(console + f"/admin/users/{user['id']}")
    assert browser.find("table#user-keys form.key-limits")
    shots.take("admin-user")
    browser.get(console + "/admin/backends")
    assert browser.find_all("table#backends tbody tr")
    shots.take("admin-backends")
    browser.get(console + "/admin/invites")
    browser.submit("form#create-invite")
    assert browser.text("code#new-invite").startswith("inv-")
    shots.take("admin-invites")

    assert len(shots.taken) == 17
    for name in shots.taken:
        for width, _ in (DESKTOP, PHONE):
            assert (shots.folder / f"{name}-{width}.png").is_file()
    assert not shots.overflowing, f"wider than a 390 px phone: {shots.overflowing}"
    assert not shots.inaccessible, shots.inaccessible
