"""Getting started, sign up, sign in, sign out and the account page."""

from inferegator.plugin import ClaimRefused, DuplicateEmail, GatewayError
from inferegator.plugin import validate as check

from ..web import SESSION_COOKIE, Page, PageError, safe_next

SIGNIN_FAILED = "The email or password is not right."


class Start(Page):
    """What the service is, its base URL, and the way in."""

    signed_in = False

    def get(self, ctx):
        ctx.render("start.html", base_url=self.console.base_url(ctx.req),
                   models=list(self.console.catalog.models.values()))


def sign_in(ctx, user: dict, next_path: str = "/keys") -> None:
    """Start a session for user (a fresh token: no fixation) and go on."""
    console = ctx.console
    ttl_s = console.config.session_ttl_h * 3600
    token = console.store.sessions.create(user["id"], ttl_s)
    ctx.set_cookie(SESSION_COOKIE, token, int(ttl_s))
    ctx.clear_cookie("inferegator_csrf")
    ctx.redirect(safe_next(next_path))


class SignUp(Page):
    """Email and password; registration open, by invitation, or closed (YAML)."""

    signed_in = False

    def _closed(self, ctx) -> bool:
        if self.console.config.registration == "closed":
            ctx.render("signup.html", 403, closed=True, error=None, email="")
            return True
        return False

    def get(self, ctx):
        if not self._closed(ctx):
            ctx.render("signup.html", closed=False, error=None, email="")

    def post(self, ctx):
        if self._closed(ctx):
            return
        email = ctx.value("email").strip()
        try:
            email = check.email(email)
            password = check.password(ctx.value("password"))
        except GatewayError as error:
            ctx.render("signup.html", 400, closed=False, error=error.message, email=email)
            return
        claim = None
        if self.console.config.registration == "invite":
            code = ctx.value("invite").strip()
            invites = self.console.store.invites
            if not code or len(code) > 128 or not invites.usable(code):
                ctx.render("signup.html", 400, closed=False, email=email,
                           error="That invitation code is not valid (or was used already).")
                return
            claim = lambda cur, user_id: invites.spend(code, user_id, cur)  # noqa: E731
        try:
            user = self.console.store.accounts.create_user(email, password, claim=claim)
        except DuplicateEmail:
            ctx.render("signup.html", 400, closed=False, email=email,
                       error="An account with this email exists already: sign in instead.")
            return
        except ClaimRefused:
            ctx.render("signup.html", 400, closed=False, email=email,
                       error="That invitation code is not valid (or was used already).")
            return
        sign_in(ctx, user)


class SignIn(Page):
    """Email and password, throttled per account and per client address; an unknown
    email and a wrong password get the same answer after the same KDF work."""

    signed_in = False

    def get(self, ctx):
        if ctx.session is not None:
            ctx.redirect(safe_next(ctx.query("next", "/keys")))
        ctx.render("signin.html", error=None, email="", next=ctx.query("next"))

    def post(self, ctx):
        config = self.console.config
        throttle = self.console.store.signin_throttle
        email = ctx.value("email").strip().lower()[:254]
        next_path = ctx.value("next")
        subjects = {"email:" + email: config.signin_failures_per_account,
                    "address:" + ctx.client_address(): config.signin_failures_per_address}
        wait = throttle.retry_after(subjects, config.signin_window_s)
        if wait > 0:
            minutes = max(1, round(wait / 60))
            raise PageError(429, "Too many sign-in attempts",
                            f"Too many failed sign-ins. Try again in about {minutes} "
                            f"minute{'s' if minutes > 1 else ''}.",
                            {"Retry-After": str(int(wait) + 1)})
        password = ctx.value("password")
        user = self.console.store.accounts.check_password(email, password[:1024])
        if user is None or user["disabled"]:
            throttle.failed(subjects)
            ctx.render("signin.html", 401, error=SIGNIN_FAILED, email=email, next=next_path)
            return
        throttle.succeeded("email:" + email, config.signin_window_s)
        sign_in(ctx, user, next_path or "/keys")


class SignOut(Page):
    """POST: end this session (or, with ``everywhere``, every session of the user)."""

    def post(self, ctx):
        sessions = self.console.store.sessions
        if ctx.value("everywhere"):
            sessions.end_all(ctx.user["id"])
        else:
            sessions.end(ctx.req.get_cookie_values(SESSION_COOKIE)[0])
        ctx.clear_cookie(SESSION_COOKIE)
        ctx.redirect("/signin")


class AccountPage(Page):
    """Who is signed in, their sessions, and signing out everywhere."""

    def get(self, ctx):
        ctx.render("account.html",
                   sessions=self.console.store.sessions.count(ctx.user["id"]))
