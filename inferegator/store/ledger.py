"""The usage ledger: one row per request, written in batches off the request path.

``record()`` only appends to memory; a background greenlet writes what has gathered
every ``flush_interval_s`` in one transaction, and ``close()`` writes the rest, so
a graceful shutdown loses nothing. A failed write keeps its rows for the next try.
"""

import logging
import time
from collections import deque
from datetime import datetime, timezone

log = logging.getLogger("inferegator.ledger")

COLUMNS = ("request_id", "key_id", "user_id", "model", "backend", "prompt_tokens",
           "completion_tokens", "cached_tokens", "cost_usd", "status", "http_status",
           "latency_ms", "ttft_ms", "created", "day")
_INSERT = (f"INSERT INTO usage_ledger ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
GROUPS = {"day": "day", "model": "model", "key": "key_id"}


def cost_usd(pricing, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
    """Prices are USD per 1M tokens; cached prompt tokens are billed at the cached price."""
    uncached = max(prompt_tokens - cached_tokens, 0)
    return (uncached * pricing.prompt + cached_tokens * pricing.cached_prompt
            + completion_tokens * pricing.completion) / 1_000_000


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


class UsageLedger:
    """Buffers ledger rows and last-used times; flushes them in batches."""

    def __init__(self, db, accounts, flush_interval_s: float = 0.2):
        self.db = db
        self.accounts = accounts
        self.flush_interval_s = flush_interval_s
        self._rows: deque[tuple] = deque()
        self._last_used: dict[str, float] = {}
        self._greenlet = None
        self.written = 0

    def record(self, row: dict) -> None:
        """Queue one ledger row (a dict with COLUMNS, day derived from created)."""
        row["day"] = utc_day(row["created"])
        self._rows.append(tuple(row[c] for c in COLUMNS))
        if row.get("key_id"):
            self._last_used[row["key_id"]] = row["created"]

    @property
    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        """Write everything queued so far; returns the rows written."""
        rows = []
        while self._rows:
            rows.append(self._rows.popleft())
        last_used, self._last_used = self._last_used, {}
        if not rows and not last_used:
            return 0
        try:
            with self.db.transaction() as cur:  # rows and last-used together, or neither
                if rows:
                    cur.executemany(_INSERT, rows)
                if last_used:
                    self.accounts.touch_keys(last_used, cur)
        except Exception:
            log.exception("ledger write failed; %d rows kept for the next try", len(rows))
            self._rows.extendleft(reversed(rows))
            for key_id, ts in last_used.items():
                self._last_used.setdefault(key_id, ts)
            return 0
        self.written += len(rows)
        return len(rows)

    def start(self) -> None:
        import gevent

        def loop():
            while True:
                gevent.sleep(self.flush_interval_s)
                self.flush()

        self._greenlet = gevent.spawn(loop)

    def close(self) -> None:
        """Stop the flusher and write what is left (graceful shutdown)."""
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        for _ in range(3):
            self.flush()
            if not self._rows:
                return
        log.error("ledger: %d rows could not be written at shutdown", len(self._rows))


def usage_summary(db, user_id: str | None, group_by: str, start_day: str | None = None,
                  end_day: str | None = None, key_id: str | None = None) -> list[dict]:
    """Requests, tokens and cost grouped by day, model or key."""
    column = GROUPS[group_by]
    where, params = [], []
    for clause, value in (("user_id = ?", user_id), ("day >= ?", start_day),
                          ("day <= ?", end_day), ("key_id = ?", key_id)):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = (f"SELECT {column} AS grp, COUNT(*) AS requests, SUM(prompt_tokens) AS prompt_tokens,"
           " SUM(completion_tokens) AS completion_tokens, SUM(cached_tokens) AS cached_tokens,"
           " SUM(cost_usd) AS cost_usd FROM usage_ledger"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" GROUP BY {column} ORDER BY {column}")
    return [{group_by: r["grp"], "requests": r["requests"],
             "prompt_tokens": int(r["prompt_tokens"] or 0),
             "completion_tokens": int(r["completion_tokens"] or 0),
             "cached_tokens": int(r["cached_tokens"] or 0),
             "cost_usd": round(float(r["cost_usd"] or 0.0), 10)}
            for r in db.query(sql, tuple(params))]


def month_spend(db, key_id: str, now: float | None = None) -> float:
    """What a key has spent this calendar month (UTC), for budgets."""
    month_start = utc_day(now or time.time())[:8] + "01"
    rows = db.query("SELECT SUM(cost_usd) AS spent FROM usage_ledger "
                    "WHERE key_id = ? AND day >= ?", (key_id, month_start))
    return float(rows[0]["spent"] or 0.0)
