"""The console of one worker: its settings, templates, static files and session lookup."""

import hashlib
import math
import pathlib
import time
from datetime import datetime, timezone

import jinja2
import markupsafe

from .web import SESSION_COOKIE

HERE = pathlib.Path(__file__).parent
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}


def when(ts) -> str:
    """A stored timestamp as the pages show it (UTC), in a <time> element."""
    if ts is None:
        return "never"
    moment = datetime.fromtimestamp(ts, timezone.utc)
    return markupsafe.Markup('<time datetime="{}">{}</time>').format(
        moment.isoformat(timespec="seconds"), moment.strftime("%Y-%m-%d %H:%M UTC"))


def usd(value) -> str:
    """A cost as pages show it: exact to the ledger's precision, no float noise."""
    if value is None:
        return "—"
    value = float(value)
    if value == 0:
        return "$0"
    if abs(value) >= 0.01:
        return f"${value:,.4f}".rstrip("0").rstrip(".")
    digits = min(10, max(4, 3 - math.floor(math.log10(abs(value)))))
    return f"${value:.{digits}f}".rstrip("0")


def count(value) -> str:
    return f"{int(value or 0):,}"


class Console:
    """What every console page shares in one worker."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.config = gateway.config.console
        self.prefix = self.config.prefix
        self.static = {p.name: (p.read_bytes(), STATIC_TYPES[p.suffix])
                       for p in (HERE / "static").iterdir() if p.suffix in STATIC_TYPES}
        self.static_version = hashlib.sha256(b"".join(
            data for data, _ in sorted(self.static.values()))).hexdigest()[:12]
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self.templates.filters.update(when=when, usd=usd, count=count)
        self.templates.globals.update(prefix=self.prefix, static=self.static_url)

    @property
    def store(self):
        return self.gateway.store

    @property
    def catalog(self):
        return self.gateway.catalog

    def static_url(self, name: str) -> str:
        return f"{self.prefix}/static/{name}?v={self.static_version}"

    def render(self, template: str, ctx, **values) -> str:
        return self.templates.get_template(template).render(
            user=ctx.user, is_admin=ctx.is_admin, csrf_token=ctx.csrf_token(),
            registration=self.config.registration, path=ctx.req.path[len(self.prefix):],
            **values)

    def session(self, req):
        """The signed-in session of this request, or None."""
        values = req.get_cookie_values(SESSION_COOKIE)
        return self.store.sessions.get(values[0]) if values else None

    def trusted(self, req) -> bool:
        """Whether the peer is a listed proxy, whose X-Forwarded-* headers are believed."""
        return req.remote_addr in self.config.trusted_proxies

    def secure_cookies(self, req) -> bool:
        setting = self.config.secure_cookies
        if setting != "auto":
            return setting == "always"
        if req.scheme == "https":
            return True
        return self.trusted(req) and (
            req.get_header("X-Forwarded-Proto") or "").lower() == "https"

    def base_url(self, req) -> str:
        """The API's base URL as users should write it (ends in /v1)."""
        if self.config.base_url:
            return self.config.base_url.rstrip("/")
        scheme, host = req.scheme, req.netloc
        if self.trusted(req):
            scheme = (req.get_header("X-Forwarded-Proto") or scheme).split(",")[0].strip()
            host = (req.get_header("X-Forwarded-Host") or host).split(",")[0].strip()
        return f"{scheme}://{host}/v1"

    def now(self) -> float:
        return time.time()
