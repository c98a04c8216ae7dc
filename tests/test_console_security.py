"""The web console's security, over real HTTP against real gateways: CSRF, cookies,
sign-in throttling, account separation, admin-only pages, security headers, registration
modes, sessions versus API keys, signing out, disabled users, the first-start admin and
turning the console off."""

import html
import itertools
import json
import re
import statistics
import time
import types

import inferegator_plugins.console as console_plugin
import openai
import pytest
import requests

from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, launch_gateway, sdk
from tests.support.console_client import (
    CSRF_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    ConsoleClient,
    cookie_attributes,
    csrf_token,
    error_text,
    set_cookies,
)
from tests.support.processes import GatewayServer

# 127.0.0.1 is a trusted proxy here, so each visitor can come from its own address
# (X-Forwarded-For) and the per-address sign-in throttle of one test never meets another.
CONSOLE_YAML = """auth:
  key_cache_ttl_s: 0
console:
  trusted_proxies: ['127.0.0.1']
  signin_failures_per_account: 3
  signin_failures_per_address: 5
"""
PER_ACCOUNT, PER_ADDRESS = 3, 5
_emails = itertools.count()
_addresses = itertools.count(1)


def new_email(tag: str = "user") -> str:
    return f"{tag}-{next(_emails)}@example.com"


def new_address() -> str:
    count = next(_addresses)
    return f"198.51.{count // 250}.{count % 250 + 1}"  # TEST-NET-2 and beyond: never real


def with_store(gateway, work):
    """Run work(store) on the gateway's own store (the same database), then close it."""
    store = Store(gateway.storage)
    try:
        return work(store)
    finally:
        store.db.close()


def user_by_email(gateway, email: str) -> dict | None:
    users = with_store(gateway, lambda s: s.accounts.list_users())
    return next((u for u in users if u["email"] == email), None)


def member(gateway, role: str = "user", tag: str = "user") -> ConsoleClient:
    """A new user who signed up in the console (open registration) and is signed in."""
    client = ConsoleClient(gateway, forwarded_for=new_address())
    client.email = new_email(tag)
    response = client.sign_up(client.email)
    assert response.status_code == 303, (response.status_code, error_text(response.text))
    assert response.headers["Location"] == "/console/keys"
    client.user_id = user_by_email(gateway, client.email)["id"]
    if role != "user":
        with_store(gateway, lambda s: s.accounts.set_user_role(client.user_id, role))
    return client


def redirected_to_signin(response) -> bool:
    return response.status_code == 303 and response.headers["Location"].startswith(
        "/console/signin")


def with_cookie(gateway, path: str, name: str, value: str, **kwargs):
    """GET path with one cookie sent by hand (whatever its flags), no redirects followed."""
    return requests.get(gateway.url + path, headers={"Cookie": f"{name}={value}"},
                        allow_redirects=False, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def gateway(sim, tmp_path_factory):
    server = launch_gateway(tmp_path_factory.mktemp("console-security"),
                            gateway_yaml([sim], extra=CONSOLE_YAML))
    yield server
    server.stop()


# -- CSRF ------------------------------------------------------------------------------------


def test_signed_out_forms_without_their_csrf_token_are_refused(gateway):
    visitor = ConsoleClient(gateway, forwarded_for=new_address())
    token = visitor.token("/signin")
    assert visitor.http.cookies.get(CSRF_COOKIE) == token  # the double-submit cookie
    user = member(gateway)
    form = {"email": user.email, "password": PASSWORD}
    for sent in ("", "not-the-token", token[:-1]):
        refused = visitor.post("/signin", form, token=sent)
        assert refused.status_code == 403, sent
        assert "security token" in error_text(refused.text)
        assert SESSION_COOKIE not in set_cookies(refused)
    stranger = ConsoleClient(gateway, forwarded_for=new_address())  # the token, not the cookie
    assert stranger.post("/signin", form, token=token).status_code == 403
    email = new_email("csrf")
    refused = visitor.post("/signup", {"email": email, "password": PASSWORD}, token="")
    assert refused.status_code == 403
    assert user_by_email(gateway, email) is None
    accepted = visitor.post("/signin", form, token=token)  # the same form with its token
    assert accepted.status_code == 303 and accepted.headers["Location"] == "/console/keys"


def test_signed_in_forms_without_their_csrf_token_are_refused(gateway):
    user, other = member(gateway), member(gateway)
    keys = user.key_ids()
    token, others_token = user.token("/keys"), other.token("/keys")
    assert token != others_token
    for sent in ("", "wrong", others_token):
        refused = user.post("/keys", {"name": "forged"}, token=sent)
        assert refused.status_code == 403, sent
        assert "security token" in error_text(refused.text)
        assert user.post("/signout", {}, token=sent).status_code == 403
        assert user.post("/signout", {"everywhere": "1"}, token=sent).status_code == 403
    assert user.key_ids() == keys
    assert user.signed_in()
    assert user.post("/keys", {"name": "real"}, token=token).status_code == 200
    assert len(user.key_ids()) == len(keys) + 1


# -- cookies ---------------------------------------------------------------------------------


def assert_console_cookie(line: str, secure: bool) -> dict:
    attributes = cookie_attributes(line)
    assert "httponly" in attributes, line
    assert attributes.get("samesite", "").lower() == "lax", line
    assert attributes.get("path") == "/console", line
    assert ("secure" in attributes) == secure, line
    return attributes


def test_cookie_flags_over_plain_http_and_behind_a_trusted_tls_proxy(gateway):
    visitor = ConsoleClient(gateway, forwarded_for=new_address())
    page = visitor.get("/signin")
    assert_console_cookie(set_cookies(page)[CSRF_COOKIE], secure=False)
    email = new_email()
    signed_up = visitor.sign_up(email)
    session = assert_console_cookie(set_cookies(signed_up)[SESSION_COOKIE], secure=False)
    assert session["max-age"] == str(24 * 3600)  # console.session_ttl_h: 24
    assert signed_up.headers["Cache-Control"] == "no-store"

    behind_tls = ConsoleClient(gateway, forwarded_for=new_address())
    behind_tls.http.headers["X-Forwarded-Proto"] = "https"
    assert_console_cookie(set_cookies(behind_tls.get("/signin"))[CSRF_COOKIE], secure=True)
    # The anonymous cookie is Secure now, so requests would not send it back over http.
    token = csrf_token(behind_tls.get("/signin").text)
    response = behind_tls.http.post(
        behind_tls.url("/signin"), data={"email": email, "password": PASSWORD,
                                         "csrf_token": token},
        headers={"Cookie": f"{CSRF_COOKIE}={token}"}, allow_redirects=False, timeout=30)
    assert response.status_code == 303
    assert_console_cookie(set_cookies(response)[SESSION_COOKIE], secure=True)


def test_secure_cookies_always_and_registration_closed(start_gateway, sim):
    gateway = start_gateway(gateway_yaml([sim], extra="console:\n  registration: closed\n"
                                         "  secure_cookies: always\n"))
    users_before = len(with_store(gateway, lambda s: s.accounts.list_users()))
    signup = requests.get(gateway.url + "/console/signup", timeout=30)
    assert "Sign-up is closed" in signup.text
    assert 'name="password"' not in signup.text
    assert signup.status_code in (200, 403)
    assert "/console/signup" not in requests.get(gateway.url + "/console/signin",
                                                 timeout=30).text

    page = requests.get(gateway.url + "/console/signin", timeout=30)
    line = set_cookies(page)[CSRF_COOKIE]
    assert_console_cookie(line, secure=True)  # even over plain http
    token = csrf_token(page.text)
    assert line.split(";")[0] == f"{CSRF_COOKIE}={token}"

    def post(path, data):
        return requests.post(gateway.url + "/console" + path, data={**data, "csrf_token": token},
                             headers={"Cookie": f"{CSRF_COOKIE}={token}"},
                             allow_redirects=False, timeout=30)

    email = new_email("closed")
    refused = post("/signup", {"email": email, "password": PASSWORD})
    assert refused.status_code == 403
    assert "Sign-up is closed" in refused.text
    assert SESSION_COOKIE not in set_cookies(refused)
    assert user_by_email(gateway, email) is None
    assert len(with_store(gateway, lambda s: s.accounts.list_users())) == users_before

    # Users the operators made still sign in (the fixture's dev@example.com).
    signed_in = post("/signin", {"email": "dev@example.com", "password": "correct horse battery"})
    assert signed_in.status_code == 303
    line = set_cookies(signed_in)[SESSION_COOKIE]
    assert_console_cookie(line, secure=True)
    cookie = line.split(";")[0].split("=", 1)[1]
    assert with_cookie(gateway, "/console/keys", SESSION_COOKIE, cookie).status_code == 200


# -- sign-in throttling and answers ------------------------------------------------------------


def test_signin_is_throttled_per_account(gateway):
    user = member(gateway)
    visitor = ConsoleClient(gateway, forwarded_for=new_address())
    for _ in range(PER_ACCOUNT):
        assert visitor.sign_in(user.email, "not the password at all").status_code == 401
    refused = visitor.sign_in(user.email, PASSWORD)  # the right password, too late
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 900 + 1
    assert SESSION_COOKIE not in set_cookies(refused)
    elsewhere = ConsoleClient(gateway, forwarded_for=new_address())  # per account, any address
    assert elsewhere.sign_in(user.email.upper(), PASSWORD).status_code == 429
    other = member(gateway)  # other accounts are not affected
    assert elsewhere.sign_in(other.email, PASSWORD).status_code == 303


def test_signin_is_throttled_per_address(gateway):
    user = member(gateway)
    address = new_address()
    visitor = ConsoleClient(gateway, forwarded_for=address)
    for _ in range(PER_ADDRESS):
        assert visitor.sign_in(new_email("nobody"), "whatever it is").status_code == 401
    refused = visitor.sign_in(user.email, PASSWORD)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert SESSION_COOKIE not in set_cookies(refused)
    elsewhere = ConsoleClient(gateway, forwarded_for=new_address())
    assert elsewhere.sign_in(user.email, PASSWORD).status_code == 303


def test_unknown_email_and_wrong_password_answer_alike(gateway):
    known = [member(gateway).email for _ in range(3)]
    tries = {"unknown": [], "wrong": []}
    for i in range(6):  # interleaved, each from its own address; 2 failures per account
        for kind in ("unknown", "wrong"):
            email = new_email("ghost") if kind == "unknown" else known[i % 3]
            visitor = ConsoleClient(gateway, forwarded_for=new_address())
            token = visitor.token("/signin")
            started = time.perf_counter()
            response = visitor.post("/signin", {"email": email, "password": "wrong password!"},
                                    token=token)
            elapsed = time.perf_counter() - started
            body = response.text.replace(html.escape(email), "EMAIL").replace(token, "TOKEN")
            tries[kind].append((response.status_code, body, sorted(set_cookies(response)),
                                elapsed))
    answers = {kind: {(status, body, tuple(cookies)) for status, body, cookies, _ in found}
               for kind, found in tries.items()}
    assert len(answers["unknown"]) == 1 and answers["unknown"] == answers["wrong"]
    (status, body, _), = answers["wrong"]
    assert status == 401 and "EMAIL" in body
    medians = {kind: statistics.median(t[3] for t in found) for kind, found in tries.items()}
    # The same KDF work for both: a skipped hash would make unknown emails many times faster.
    assert 1 / 3 < medians["unknown"] / medians["wrong"] < 3, medians


# -- separation between users ------------------------------------------------------------------


def test_one_user_cannot_see_or_revoke_anothers_keys(gateway):
    alice, bob = member(gateway, tag="alice"), member(gateway, tag="bob")
    secret, key_id = alice.create_key("alice-private-key")
    assert alice.get(f"/keys/{key_id}/revoke").status_code == 200
    seen = bob.get(f"/keys/{key_id}/revoke")
    assert seen.status_code == 404
    unknown = bob.get("/keys/no-such-key/revoke")
    assert unknown.status_code == 404
    assert seen.text.replace(key_id, "ID") == unknown.text.replace("no-such-key", "ID")
    token = bob.token("/keys")
    assert bob.post(f"/keys/{key_id}/revoke", token=token).status_code == 404
    for path in ("/keys", "/usage", "/usage.csv", "/playground"):
        page = bob.get(path)
        assert page.status_code == 200
        assert key_id not in page.text and "alice-private-key" not in page.text, path
    assert key_id not in bob.key_ids()
    assert not with_store(gateway, lambda s: s.accounts.get_key(key_id))["revoked"]
    assert sdk(gateway, secret).models.list().data  # alice's key still works


def admin_paths(user_id: str) -> list[str]:
    return ["/admin", "/admin/users", f"/admin/users/{user_id}", "/admin/backends",
            "/admin/invites"]


def test_admin_pages_and_actions_are_for_admins_only(gateway):
    admin, user = member(gateway, "admin", tag="admin"), member(gateway)
    secret, key_id = user.create_key("user-key")
    backends = admin.get("/admin/backends")
    assert backends.status_code == 200
    backend = html.unescape(re.search(r'name="backend" value="([^"]+)"', backends.text)[1])
    for path in admin_paths(user.user_id):
        assert admin.get(path).status_code in (200, 303), path  # /admin: to /admin/users
        refused = user.get(path)
        assert refused.status_code == 403, path
        assert "Admins only" in refused.text

    token = user.token("/keys")  # a valid token of the user's own session
    invites = len(with_store(gateway, lambda s: s.invites.list()))
    actions = [(f"/admin/users/{user.user_id}", {"action": "make_admin"}),
               (f"/admin/users/{admin.user_id}", {"action": "disable"}),
               (f"/admin/users/{admin.user_id}", {"action": "sign_out"}),
               (f"/admin/keys/{key_id}", {"action": "revoke"}),
               (f"/admin/keys/{key_id}", {"action": "limits", "requests_per_minute": "1"}),
               ("/admin/backends", {"action": "drain", "backend": backend}),
               ("/admin/invites", {})]
    for path, form in actions:
        assert user.post(path, form, token=token).status_code == 403, path
    assert user_by_email(gateway, user.email)["role"] == "user"
    assert not user_by_email(gateway, admin.email)["disabled"]
    assert admin.signed_in()
    assert with_store(gateway, lambda s: s.accounts.get_key(key_id))["limits"][
        "requests_per_minute"] is None
    assert sdk(gateway, secret).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert len(with_store(gateway, lambda s: s.invites.list())) == invites
    assert backend not in with_store(gateway, lambda s: s.drained_backends())

    visitor = ConsoleClient(gateway, forwarded_for=new_address())
    for path in admin_paths(user.user_id):
        response = visitor.get(path)
        assert redirected_to_signin(response), path
        assert response.headers["Location"].startswith("/console/signin?next=/admin"), path
    anonymous_token = visitor.token("/signin")
    for path, form in actions:
        assert redirected_to_signin(visitor.post(path, form, token=anonymous_token)), path


# -- headers on every console response ------------------------------------------------------------


def route_samples(user_id: str, key_id: str) -> dict[str, list[str]]:
    """Each console route template, with the concrete paths that exercise it."""
    return {
        "": [""], "/signup": ["/signup"], "/signin": ["/signin", "/signin?next=/usage"],
        "/signout": ["/signout"], "/account": ["/account"], "/keys": ["/keys"],
        "/keys/{key_id}/revoke": [f"/keys/{key_id}/revoke", "/keys/nope/revoke"],
        "/models": ["/models", "/models?sort=prompt&dir=desc"], "/usage": ["/usage"],
        "/usage.csv": ["/usage.csv"], "/playground": ["/playground"], "/docs": ["/docs"],
        "/admin": ["/admin"], "/admin/users": ["/admin/users"],
        "/admin/users/{user_id}": [f"/admin/users/{user_id}", "/admin/users/nope"],
        "/admin/keys/{key_id}": [f"/admin/keys/{key_id}"],
        "/admin/backends": ["/admin/backends"], "/admin/invites": ["/admin/invites"],
        "/static/{name}": ["/static/console.css", "/static/console.js",
                           "/static/playground.js", "/static/missing.css"],
        "/{rest:path}": ["/", "/no/such/page", "/.env"],
    }


def header_problems(response) -> list[str]:
    problems = []
    csp = response.headers.get("Content-Security-Policy", "")
    if not csp:
        problems.append("no Content-Security-Policy")
    else:
        if "unsafe-inline" in csp or "unsafe-eval" in csp:
            problems.append(f"CSP allows unsafe code: {csp}")
        if "frame-ancestors 'none'" not in csp:
            problems.append(f"CSP lacks frame-ancestors 'none': {csp}")
        if "default-src" not in csp:
            problems.append(f"CSP lacks default-src: {csp}")
    if response.headers.get("X-Content-Type-Options", "").lower() != "nosniff":
        problems.append("no X-Content-Type-Options: nosniff")
    if response.headers.get("X-Frame-Options", "").upper() != "DENY":
        problems.append("no X-Frame-Options: DENY")
    if response.headers.get("Referrer-Policy", "") not in (
            "no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"):
        problems.append(f"Referrer-Policy {response.headers.get('Referrer-Policy')!r}")
    return problems


def test_security_headers_on_every_console_response(gateway):
    admin, user = member(gateway, "admin", tag="admin"), member(gateway)
    _, key_id = user.create_key("headers")
    samples = route_samples(user.user_id, key_id)
    templates = [path[len("/console"):] for path, _ in
                 console_plugin.routes(types.SimpleNamespace(prefix="/console"))]
    assert sorted(templates) == sorted(samples), "a console route has no sample here"
    visitor = ConsoleClient(gateway, forwarded_for=new_address())
    responses = []
    for client in (visitor, user, admin):
        for paths in samples.values():
            for path in paths:
                responses.append((client, "GET", path, client.get(path)))
                if not path.startswith("/static"):
                    responses.append((client, "POST", path,
                                      client.post(path, {"action": "x"}, token="")))
    responses.append((user, "POST", "/keys (not a form)", user.http.post(
        user.url("/keys"), json={"name": "x"}, allow_redirects=False, timeout=30)))
    statuses = {r.status_code for *_, r in responses}
    assert {200, 303, 403, 404, 405, 415} <= statuses, statuses
    problems = [f"{c.email if hasattr(c, 'email') else 'visitor'} {m} {p} -> "
                f"{r.status_code}: {problem}"
                for c, m, p, r in responses for problem in header_problems(r)]
    assert not problems, "\n".join(problems)
    for _, _, path, response in responses:
        if response.status_code >= 400 and response.headers["Content-Type"].startswith(
                "text/html"):
            assert "Traceback" not in response.text, path


# -- registration by invitation and the first-start admin ----------------------------------------


@pytest.fixture(scope="module")
def first_start(sim, tmp_path_factory):
    """A gateway started on an empty store, inviting sign-ups: (server, email, password)."""
    folder = tmp_path_factory.mktemp("first-start")
    yaml_text = (f"storage: 'sqlite:///{folder}/first.db'\n" +
                 gateway_yaml([sim], extra="console:\n  registration: invite\n"))
    server = GatewayServer(folder, yaml_text)
    server.storage = f"sqlite:///{folder}/first.db"
    output = server.output()
    email = re.search(r"email:\s+(\S+)", output)
    password = re.search(r"password:\s+(\S+)", output)
    assert email and password, output
    yield server, email[1], password[1]
    server.stop()


def test_first_start_admin_signs_in_to_the_console_named_in_the_banner(first_start):
    server, email, password = first_start
    output = server.output()
    match = re.search(r"Console: (http://127\.0\.0\.1:(\d+)/console)\b", output)
    assert match, output
    assert int(match[2]) == server.port
    start = requests.get(match[1], timeout=30)
    assert start.status_code == 200 and start.headers["Content-Type"].startswith("text/html")
    admin = ConsoleClient(server)
    assert admin.sign_in(email, password + "x").status_code == 401
    signed_in = admin.sign_in(email, password)
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/console/keys"
    users = admin.get("/admin/users")
    assert users.status_code == 200
    assert html.escape(email) in users.text


def test_registration_by_invitation_needs_a_fresh_code(first_start):
    server, email, password = first_start
    admin = ConsoleClient(server)
    assert admin.sign_in(email, password).status_code == 303
    visitor = ConsoleClient(server)
    page = visitor.get("/signup")
    assert page.status_code == 200 and 'id="invite"' in page.text
    first = new_email("invited")
    for code in (None, "", "inv-made-up-code"):
        refused = visitor.sign_up(first, invite=code)
        assert refused.status_code == 400, code
        assert "invitation code is not valid" in error_text(refused.text)
        assert user_by_email(server, first) is None

    made = admin.post("/admin/invites", {})
    assert made.status_code == 200
    code = html.unescape(re.search(r'<code id="new-invite">([^<]+)</code>', made.text)[1])
    assert code not in admin.get("/admin/invites").text  # shown once
    accepted = visitor.sign_up(first, invite=code)
    assert accepted.status_code == 303
    assert visitor.signed_in()
    assert user_by_email(server, first)["role"] == "user"

    second = new_email("invited")
    reused = ConsoleClient(server).sign_up(second, invite=code)
    assert reused.status_code == 400
    assert "invitation code is not valid" in error_text(reused.text)
    assert user_by_email(server, second) is None


def test_a_peer_that_is_not_a_trusted_proxy_cannot_claim_tls(first_start):
    server, _, _ = first_start  # console.trusted_proxies is empty there
    claims = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    start = requests.get(server.url + "/console", headers=claims, timeout=30)
    base_url = html.unescape(re.search(r'<code id="base-url">([^<]+)</code>', start.text)[1])
    assert base_url == f"{server.url}/v1"
    assert_console_cookie(set_cookies(start)[CSRF_COOKIE], secure=False)


# -- sessions, keys and signing out ------------------------------------------------------------


def test_a_console_session_never_authenticates_the_api_nor_a_key_the_console(gateway):
    user = member(gateway)
    secret, _ = user.create_key("separate")
    cookie = {"Cookie": f"{SESSION_COOKIE}={user.session_cookie}"}
    models = requests.get(gateway.url + "/v1/models", headers=cookie, timeout=30)
    assert models.status_code == 401
    chat = requests.post(gateway.url + "/v1/chat/completions", headers=cookie, timeout=30,
                         json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 401
    assert requests.get(gateway.url + "/v1/models", timeout=30,
                        headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    for key in (secret, gateway.key):
        for path in ("/console/keys", "/console/usage", "/console/admin/users"):
            response = requests.get(gateway.url + path, timeout=30, allow_redirects=False,
                                    headers={"Authorization": f"Bearer {key}"})
            assert redirected_to_signin(response), path


def test_sign_out_ends_the_session_and_sign_out_everywhere_ends_all(gateway):
    laptop = member(gateway)
    phone = ConsoleClient(gateway, forwarded_for=new_address())
    assert phone.sign_in(laptop.email).status_code == 303
    old = laptop.session_cookie
    assert old != phone.session_cookie
    signed_out = laptop.post("/signout", {}, form_page="/keys")
    assert signed_out.status_code == 303
    assert signed_out.headers["Location"] == "/console/signin"
    cleared = cookie_attributes(set_cookies(signed_out)[SESSION_COOKIE])
    assert "expires" in cleared and "1970" in cleared["expires"]
    assert redirected_to_signin(with_cookie(gateway, "/console/keys", SESSION_COOKIE, old))
    assert phone.signed_in()  # only that session ended

    tablet = ConsoleClient(gateway, forwarded_for=new_address())
    assert tablet.sign_in(laptop.email).status_code == 303
    account = phone.get("/account")
    assert 'name="everywhere"' in account.text
    cookies = [phone.session_cookie, tablet.session_cookie]
    assert phone.post("/signout", {"everywhere": "1"}, token=csrf_token(
        account.text)).status_code == 303
    for cookie in cookies:
        assert redirected_to_signin(with_cookie(gateway, "/console/keys", SESSION_COOKIE,
                                                cookie))
    assert not tablet.signed_in()
    assert with_store(gateway, lambda s: s.sessions.count(laptop.user_id)) == 0


def test_a_disabled_users_session_and_keys_stop_working(gateway):
    admin, user = member(gateway, "admin", tag="admin"), member(gateway)
    secret, _ = user.create_key("soon-disabled")
    client = sdk(gateway, secret)
    assert client.models.list().data
    disabled = admin.post(f"/admin/users/{user.user_id}", {"action": "disable"},
                          form_page="/admin/users")
    assert disabled.status_code == 303
    assert user_by_email(gateway, user.email)["disabled"]
    assert not user.signed_in()
    with pytest.raises(openai.AuthenticationError):  # auth.key_cache_ttl_s: 0
        client.models.list()
    again = ConsoleClient(gateway, forwarded_for=new_address())
    refused = again.sign_in(user.email)
    assert refused.status_code == 401
    assert error_text(refused.text) == "The email or password is not right."
    assert admin.post(f"/admin/users/{user.user_id}", {"action": "enable"},
                      form_page="/admin/users").status_code == 303
    assert again.sign_in(user.email).status_code == 303
    assert client.models.list().data


# -- the console turned off ------------------------------------------------------------------------


def test_console_enabled_false_removes_the_console(start_gateway, sim):
    gateway = start_gateway(gateway_yaml([sim], extra="console:\n  enabled: false\n"))
    for path in ("/console", "/console/signin", "/console/static/console.css"):
        response = requests.get(gateway.url + path, timeout=30, allow_redirects=False)
        assert response.status_code == 404, path
        assert response.headers["Content-Type"].startswith("application/json"), path
        assert "error" in json.loads(response.text)
        assert "inferegator_" not in response.headers.get("Set-Cookie", "")
    reply = sdk(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.usage.completion_tokens > 0


def test_a_user_held_below_the_defaults_cannot_mint_a_key_above_them(gateway):
    user = member(gateway, tag="held")
    _, first = user.create_key("first")
    with_store(gateway, lambda s: s.accounts.set_key_limits(
        first, requests_per_minute=5, tokens_per_minute=700))
    _, second = user.create_key("second", monthly_budget_usd="3")
    limits = with_store(gateway, lambda s: s.accounts.get_key(second))["limits"]
    assert limits["requests_per_minute"] == 5 and limits["tokens_per_minute"] == 700
    assert limits["monthly_budget_usd"] == 3.0
    fresh = member(gateway, tag="fresh")
    _, own = fresh.create_key("own")
    limits = with_store(gateway, lambda s: s.accounts.get_key(own))["limits"]
    assert limits["requests_per_minute"] is None and limits["tokens_per_minute"] is None
