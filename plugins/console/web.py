"""The console's web layer: pages, sessions, CSRF, cookies and security headers.

Every console resource is a ``Page``: its ``get(ctx)``/``post(ctx)`` run inside one
place that looks up the session, checks the CSRF token of every POST, answers errors as
HTML pages (never a traceback) and sets the security headers on every response. The
session cookie opens only the console (``/v1`` reads Bearer keys alone), and no
secret is ever put in a URL.
"""

import hmac
import logging
import secrets
import urllib.parse
from datetime import datetime, timezone

import falcon

from inferegator.plugin import GatewayError, read_body

log = logging.getLogger("inferegator.console")

SESSION_COOKIE = "inferegator_session"
ANON_CSRF_COOKIE = "inferegator_csrf"  # double-submit token of the sign-in and sign-up forms
MAX_FORM_BYTES = 64 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class PageError(Exception):
    """Answer with an HTML error page: a status, a title and a sentence for the user."""

    def __init__(self, status: int, title: str, message: str, headers=None):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message
        self.headers = headers or {}


class Redirect(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Answer 303 See Other to a console path."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def not_found_page():
    return PageError(404, "Not found", "There is no such page, or it is not yours.")


class Context:
    """One console request: who is signed in, the form posted, and how to answer."""

    def __init__(self, console, req, resp, params):
        self.console, self.req, self.resp, self.params = console, req, resp, params
        self.session = None
        self.form: dict[str, list[str]] = {}

    @property
    def user(self) -> dict | None:
        return self.session.user if self.session else None

    @property
    def is_admin(self) -> bool:
        return bool(self.user and self.user["role"] == "admin")

    def value(self, name: str, default: str = "") -> str:
        """A posted field's first value (stripped of nothing: passwords keep their spaces)."""
        return (self.form.get(name) or [default])[0]

    def values(self, name: str) -> list[str]:
        return self.form.get(name, [])

    def query(self, name: str, default: str = "") -> str:
        value = self.req.get_param(name)
        return value if isinstance(value, str) else default

    # -- answers --------------------------------------------------------------------------

    def render(self, template: str, status: int = 200, **values) -> None:
        self.resp.status = falcon.code_to_http_status(status)
        self.resp.content_type = "text/html; charset=utf-8"
        self.resp.text = self.console.render(template, self, **values)

    def redirect(self, path: str) -> None:
        raise Redirect(path)

    def set_cookie(self, name: str, value: str, max_age: int | None) -> None:
        self.resp.set_cookie(name, value, max_age=max_age, path=self.console.prefix,
                             secure=self.console.secure_cookies(self.req), http_only=True,
                             same_site="Lax")

    def clear_cookie(self, name: str) -> None:
        self.resp.set_cookie(name, "", expires=_EPOCH, path=self.console.prefix,
                             secure=self.console.secure_cookies(self.req), http_only=True,
                             same_site="Lax")

    # -- CSRF -----------------------------------------------------------------------------

    def csrf_token(self) -> str:
        """The token this page's forms carry: the session's, or a signed-out visitor's
        double-submit cookie (set here when missing)."""
        if self.session is not None:
            return self.session.csrf_token
        token = getattr(self, "_anon_csrf", None) or self._cookie(ANON_CSRF_COOKIE)
        if not token or len(token) > 128:
            token = secrets.token_urlsafe(32)
            self.set_cookie(ANON_CSRF_COOKIE, token, None)
        self._anon_csrf = token
        return token

    def check_csrf(self) -> None:
        expected = self.session.csrf_token if self.session is not None \
            else self._cookie(ANON_CSRF_COOKIE)
        sent = self.value("csrf_token")
        if not expected or not sent or not hmac.compare_digest(sent.encode(),
                                                                expected.encode()):
            raise PageError(403, "Form expired", "This form could not be accepted: its "
                            "security token is missing or out of date. Go back, reload the "
                            "page and try again.")

    def _cookie(self, name: str) -> str | None:
        values = self.req.get_cookie_values(name)
        return values[0] if values else None

    def read_form(self) -> None:
        if self.req.content_type is None or not self.req.content_type.startswith(
                "application/x-www-form-urlencoded"):
            raise PageError(415, "Unsupported form", "Forms must be posted as "
                            "application/x-www-form-urlencoded.")
        server = self.console.gateway.config.server
        raw = read_body(self.req, min(MAX_FORM_BYTES, server.max_body_bytes),
                        server.body_timeout_s)
        try:
            text = raw.decode("utf-8")
            self.form = urllib.parse.parse_qs(text, keep_blank_values=True,
                                              max_num_fields=500, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise PageError(400, "Unreadable form", "The form could not be read.") from None
        for values in self.form.values():
            for value in values:
                if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
                    raise PageError(400, "Unreadable form", "The form holds characters "
                                    "that are not text.")

    # -- where the request came from --------------------------------------------------------

    def client_address(self) -> str:
        """The client's address: the peer, or what trusted proxies forwarded."""
        address = self.req.remote_addr or "unknown"
        if self.console.trusted(self.req):
            hops = [h.strip() for h in (self.req.get_header("X-Forwarded-For") or "").split(",")
                    if h.strip()]
            for hop in reversed(hops):
                address = hop
                if hop not in self.console.config.trusted_proxies:
                    break
        return address[:64]


class Page:
    """A console resource. Subclasses define ``get(ctx)`` and/or ``post(ctx)``.

    ``signed_in``: the page needs a session (else: to the sign-in page); ``admin``: the
    page is for admins only (403 otherwise).
    """

    signed_in = True
    admin = False

    def __init__(self, console):
        self.console = console

    def on_get(self, req, resp, **params):
        self._serve("get", req, resp, params)

    def on_post(self, req, resp, **params):
        self._serve("post", req, resp, params)

    def _serve(self, method: str, req, resp, params) -> None:
        ctx = Context(self.console, req, resp, params)
        try:
            handler = getattr(self, method, None)
            if handler is None:
                allowed = ", ".join(m.upper() for m in ("get", "post") if hasattr(self, m))
                raise PageError(405, "Method not allowed", f"This page answers {allowed}.",
                                {"Allow": allowed})
            ctx.session = self.console.session(req)
            if method == "post":
                ctx.read_form()
                ctx.check_csrf()
            if self.signed_in and ctx.session is None:
                if method == "get":
                    here = req.relative_uri[len(self.console.prefix):]
                    target = urllib.parse.quote(here, safe="/")
                    raise Redirect(f"/signin?next={target}")
                raise Redirect("/signin")
            if self.admin and not ctx.is_admin:
                raise PageError(403, "Admins only", "This page is for administrators.")
            handler(ctx)
        except Redirect as redirect:
            resp.status = falcon.HTTP_303
            resp.location = self.console.prefix + redirect.path
            resp.text = ""
        except PageError as error:
            resp.set_headers(error.headers)
            ctx.render("error.html", error.status, error=error)
        except GatewayError as error:  # body too large or too slow, from read_body
            ctx.render("error.html", error.status,
                       error=PageError(error.status, "Request refused", error.message))
        except Exception:
            log.exception("console: unhandled error on %s %s", req.method, req.path)
            ctx.render("error.html", 500, error=PageError(
                500, "Something went wrong", "The page could not be shown. Try again; if it "
                "keeps failing, tell the operators of this service."))
        finally:
            resp.set_headers(SECURITY_HEADERS)
            if ctx.session is not None or req.path.endswith(("/keys", "/signin", "/signup")):
                resp.set_header("Cache-Control", "no-store")


def safe_next(path: str) -> str:
    """A sign-in's ``next`` only if it is a path inside the console (no open redirect)."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path or any(
            ord(c) < 0x20 for c in path):
        return "/keys"
    return path
