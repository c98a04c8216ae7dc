"""The Store: one database with its accounts and usage ledger, migrated on open."""

from .accounts import Accounts
from .database import Database
from .invites import Invites
from .journal import journal_dir
from .ledger import UsageLedger
from .migrations import migrate
from .sessions import Sessions
from .signin import SigninThrottle


class Store:
    """Accounts, keys and the ledger over one database URL."""

    def __init__(self, url: str, pool_size: int = 4, ledger_flush_interval_s: float = 0.2,
                 ledger_journal: str = ""):
        self.db = Database(url, pool_size=pool_size)
        migrate(self.db)
        self.accounts = Accounts(self.db)
        self.sessions = Sessions(self.db)  # the web console's sign-ins
        self.signin_throttle = SigninThrottle(self.db)
        self.invites = Invites(self.db)
        self.ledger = UsageLedger(self.db, self.accounts, ledger_flush_interval_s,
                                  journal_dir(url, ledger_journal))

    def drained_backends(self) -> set[str]:
        """Names of the backends an operator has drained (read by every worker's poll)."""
        return {r["name"] for r in self.db.query("SELECT name FROM backend_drains")}

    def set_drained(self, name: str, drained: bool) -> None:
        import time

        with self.db.transaction() as cur:
            cur.execute("DELETE FROM backend_drains WHERE name = ?", (name,))
            if drained:
                cur.execute("INSERT INTO backend_drains (name, drained_at) VALUES (?, ?)",
                            (name, time.time()))

    def close(self) -> None:
        self.ledger.close()
        self.db.close()


def bootstrap_admin(store: Store, email: str) -> tuple[dict, str, str] | None:
    """On an empty store, create an admin with a random password and an API key.

    Returns (user, password, key) to print once, or None when users exist already.
    """
    import secrets

    from .accounts import DuplicateEmail

    if store.accounts.count_users():
        return None
    password = secrets.token_urlsafe(18)
    try:
        user = store.accounts.create_user(email, password, role="admin")
    except DuplicateEmail:  # another replica, started at the same moment, made it
        return None
    key, _ = store.accounts.create_key(user["id"], "bootstrap admin key")
    return user, password, key
