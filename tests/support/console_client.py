"""A browserless client of the web console: a requests.Session that reads each form's CSRF
token from the page that carries it and posts forms the way a browser does."""

import html
import re
import urllib.parse

import requests

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]*)"')
SESSION_COOKIE = "inferegator_session"
CSRF_COOKIE = "inferegator_csrf"
PASSWORD = "correct horse battery staple"
FORM_TYPE = "application/x-www-form-urlencoded"  # what a browser sends, even for no fields


def csrf_token(page: str) -> str:
    """The CSRF token of the first form of a page."""
    match = CSRF_FIELD.search(page)
    assert match, "the page has no form with a csrf_token"
    return html.unescape(match.group(1))


def set_cookies(response) -> dict[str, str]:
    """Each Set-Cookie of a response, by cookie name: the whole header line."""
    return {line.split("=", 1)[0].strip(): line
            for line in response.raw.headers.getlist("Set-Cookie")}


def cookie_attributes(line: str) -> dict[str, str]:
    """A Set-Cookie line's attributes, names lowercased ("httponly": "" when present)."""
    attributes = {}
    for part in line.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value
    return attributes


def error_text(page: str) -> str:
    """The text of a page's p.notice.error, or ''."""
    match = re.search(r'<p class="notice error"[^>]*>(.*?)</p>', page, re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip() if match else ""


class ConsoleClient:
    """One visitor of the console at gateway.url + prefix. ``forwarded_for`` (with a
    gateway that trusts 127.0.0.1 as a proxy) makes the visitor come from that address."""

    def __init__(self, gateway, prefix: str = "/console", forwarded_for: str | None = None):
        self.gateway = gateway
        self.base = gateway.url + prefix
        self.http = requests.Session()
        if forwarded_for:
            self.http.headers["X-Forwarded-For"] = forwarded_for

    def url(self, path: str) -> str:
        return self.base + path

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        return self.http.get(self.url(path), **kwargs)

    def token(self, page_path: str) -> str:
        """The CSRF token of the form on page_path (fetching it sets any cookie it needs)."""
        response = self.get(page_path)
        assert response.status_code == 200, (page_path, response.status_code)
        return csrf_token(response.text)

    def post(self, path: str, data: dict | None = None, *, token: str | None = None,
             form_page: str | None = None, **kwargs) -> requests.Response:
        """POST a form to path. Its csrf_token: ``token`` if given (None: fetched from
        ``form_page``, default path); pass token="" to post none."""
        data = dict(data or {})
        if token is None:
            token = self.token(form_page or path)
        if token != "":
            data["csrf_token"] = token
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        headers = {"Content-Type": FORM_TYPE, **kwargs.pop("headers", {})}
        return self.http.post(self.url(path), data=urllib.parse.urlencode(data, doseq=True),
                              headers=headers, **kwargs)

    # -- the account ----------------------------------------------------------------------

    def sign_up(self, email: str, password: str = PASSWORD, invite: str | None = None):
        data = {"email": email, "password": password}
        if invite is not None:
            data["invite"] = invite
        return self.post("/signup", data)

    def sign_in(self, email: str, password: str = PASSWORD) -> requests.Response:
        return self.post("/signin", {"email": email, "password": password})

    @property
    def session_cookie(self) -> str | None:
        return self.http.cookies.get(SESSION_COOKIE)

    def signed_in(self) -> bool:
        """Whether /keys opens (else it redirects to the sign-in page)."""
        response = self.get("/keys")
        if response.status_code == 303:
            assert "/signin" in response.headers["Location"]
            return False
        assert response.status_code == 200, response.status_code
        return True

    # -- keys -----------------------------------------------------------------------------

    def create_key(self, name: str, **fields) -> tuple[str, str]:
        """A new key from the API Keys form: (its secret, its id)."""
        before = set(self.key_ids())
        response = self.post("/keys", {"name": name, **fields})
        assert response.status_code == 200, (response.status_code, error_text(response.text))
        match = re.search(r'<code id="new-key">([^<]+)</code>', response.text)
        assert match, "the answer shows no code#new-key"
        (key_id,) = set(self.key_ids()) - before
        return html.unescape(match.group(1)).strip(), key_id

    def key_ids(self) -> list[str]:
        """The data-key-id of each row of the API Keys page's table#keys."""
        response = self.get("/keys")
        assert response.status_code == 200, response.status_code
        return re.findall(r'<tr data-key-id="([^"]+)"', response.text)
