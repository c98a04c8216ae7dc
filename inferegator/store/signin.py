"""Sign-in throttling shared by every worker and replica: failures are rows in the store.

Each failed sign-in is recorded under its subjects (the email asked for and the client's
address); a subject with ``limit`` failures within ``window_s`` is refused until the
oldest of them leaves the window. Unknown emails are counted like known ones, so the
throttle does not tell which accounts exist.
"""

import time


class SigninThrottle:
    """The signin_failures table."""

    def __init__(self, db, clock=time.time):
        self.db = db
        self.clock = clock

    def retry_after(self, limits: dict[str, int], window_s: float) -> float:
        """Seconds until every subject (subject -> its limit) may try again; 0: now."""
        now = self.clock()
        wait = 0.0
        for subject, limit in limits.items():
            rows = self.db.query("SELECT at FROM signin_failures WHERE subject = ? AND at > ? "
                                 "ORDER BY at DESC", (subject, now - window_s))
            if len(rows) >= limit:
                wait = max(wait, rows[limit - 1]["at"] + window_s - now)
        return wait

    def failed(self, subjects) -> None:
        now = self.clock()
        with self.db.transaction() as cur:
            cur.executemany("INSERT INTO signin_failures (subject, at) VALUES (?, ?)",
                            [(subject, now) for subject in subjects])

    def succeeded(self, subject: str, window_s: float) -> None:
        """Forget a subject's failures (the account signed in) and prune old rows."""
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM signin_failures WHERE subject = ?", (subject,))
            cur.execute("DELETE FROM signin_failures WHERE at < ?",
                        (self.clock() - window_s,))
