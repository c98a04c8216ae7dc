"""The usage ledger: one row per request, written in batches off the request path.

``record()`` checks a row, appends it to this worker's journal (one write: it survives a
killed worker) and to memory; a background greenlet writes what has gathered every
``flush_interval_s`` in one transaction, and ``close()`` writes the rest. A batch the
database refuses is written row by row: a row it cannot store goes to the dead letters (a
log line with its request id, and a count) while every other row is written; a database
that cannot be reached keeps the rows for the next try. Rows that dead workers left in
their journals are written by the next worker to start (and rechecked while serving).
"""

import itertools
import logging
import math
import os
import time
import uuid
from collections import deque
from datetime import datetime, timezone

from ..periodic import every
from .journal import LedgerJournal

log = logging.getLogger("inferegator.ledger")

COLUMNS = ("request_id", "key_id", "user_id", "model", "backend", "prompt_tokens",
           "completion_tokens", "cached_tokens", "cost_usd", "status", "http_status",
           "latency_ms", "ttft_ms", "created", "day", "entry_id")
# entry_id is unique: a row written twice (a journal replayed after its batch) is one row.
_INSERT = (f"INSERT INTO usage_ledger ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT DO NOTHING")
GROUPS = {"day": "day", "model": "model", "key": "key_id"}
_TEXT = {"request_id": 128, "key_id": 64, "user_id": 64, "model": 256, "backend": 512,
         "status": 32}
_INTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "http_status")
_FLOATS = ("cost_usd", "latency_ms", "ttft_ms", "created")
_INT_MAX = 2 ** 31 - 1  # PostgreSQL INTEGER
RECOVER_EVERY_S = 5.0
_LAST_DAY = [None, ""]  # (days since the epoch, its date): utc_day's memo


def utc_day(ts: float) -> str:
    """The UTC date of a timestamp, YYYY-MM-DD (formatted once per day, not per row)."""
    day = int(ts // 86400)
    if day != _LAST_DAY[0]:
        _LAST_DAY[:] = day, datetime.fromtimestamp(day * 86400, timezone.utc).strftime(
            "%Y-%m-%d")
    return _LAST_DAY[1]


def _text(value, limit: int):
    if value is None:
        return None
    value = str(value)[:limit]
    if value.isascii():
        return value.replace("\x00", "")
    # No database stores a lone surrogate, and PostgreSQL no NUL: the row is kept all the same.
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


def checked_row(row: dict) -> dict:
    """A row every database accepts: text valid and bounded, counts in range, numbers
    finite. Whatever a request carried, its usage is still billed."""
    for name, limit in _TEXT.items():
        row[name] = _text(row.get(name), limit)
    row["model"] = row["model"] or ""
    for name in _INTS:
        value = row.get(name)
        row[name] = min(max(value, 0), _INT_MAX) if type(value) is int else 0
    for name in _FLOATS:
        value = row.get(name)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        row[name] = float(value) if ok else (None if name == "ttft_ms" else 0.0)
    return row


class UsageLedger:
    """Buffers ledger rows and last-used times; flushes them in batches."""

    def __init__(self, db, accounts, flush_interval_s: float = 0.2, journal_dir: str = ""):
        self.db = db
        self.accounts = accounts
        self.flush_interval_s = flush_interval_s
        self.journal = LedgerJournal(journal_dir) if journal_dir else None
        self._rows: deque[tuple] = deque()
        self._last_used: dict[str, float] = {}
        self._greenlets = []
        self._entry_ids = itertools.count()
        self._entry_prefix = uuid.uuid4().hex[:16]
        self.written = 0
        self.dead_letters = 0
        self.recovered = 0
        self.on_flush = None  # called with each batch write's seconds (the metrics plugin)

    def record(self, row: dict) -> None:
        """Queue one ledger row (a dict with COLUMNS but day and entry_id)."""
        row = checked_row(row)
        row["day"] = utc_day(row["created"])
        row["entry_id"] = f"{self._entry_prefix}-{next(self._entry_ids)}"
        values = tuple(row[c] for c in COLUMNS)
        if self.journal is not None:
            try:
                self.journal.append(values)
            except OSError as exc:  # a full disk must not fail the answer; memory still has it
                log.error("ledger journal write failed (%s); row %s kept in memory only",
                          exc, row["request_id"])
        self._rows.append(values)
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
        if self.journal is not None:
            self.journal.seal()
        started = time.perf_counter()
        written, kept = self._write(rows, last_used)
        elapsed = time.perf_counter() - started
        if kept:
            self._rows.extendleft(reversed(kept))
            for key_id, ts in last_used.items():
                self._last_used.setdefault(key_id, ts)
        elif self.journal is not None:
            self.journal.sealed_written()
        self.written += written
        if self.on_flush is not None:
            self.on_flush(elapsed)
        return written

    def _write(self, rows: list, last_used: dict) -> tuple[int, list]:
        """(rows written, rows kept for the next try)."""
        try:
            with self.db.transaction() as cur:  # rows and last-used together, or neither
                if rows:  # a row written before (a retried batch) fails it: see below
                    cur.insert_rows("usage_ledger", COLUMNS, rows)
                if last_used:
                    self.accounts.touch_keys(last_used, cur)
            return len(rows), []
        except Exception as exc:
            if not self.db.is_data_error(exc):
                log.error("ledger write failed (%s); %d rows kept for the next try", exc,
                          len(rows))
                return 0, rows
        # The database refused something in the batch (a value, or a row already written
        # by a batch whose commit was not confirmed): row by row, duplicates skipped.
        written = 0
        for i, row in enumerate(rows):
            try:
                with self.db.transaction() as cur:
                    cur.execute(_INSERT, row)
                written += 1
            except Exception as exc:
                if not self.db.is_data_error(exc):
                    return written, rows[i:]
                self.dead_letters += 1
                log.error("ledger: the row of request %s cannot be stored (%s); "
                          "dead-lettered (%d so far)", row[0], exc, self.dead_letters)
        try:
            with self.db.transaction() as cur:
                self.accounts.touch_keys(last_used, cur)
        except Exception as exc:  # last-used times are a convenience, not billing
            log.warning("ledger: last-used times not written (%s)", exc)
        return written, []

    def recover(self) -> int:
        """Write the rows of journals that dead workers left; returns the rows written."""
        if self.journal is None:
            return 0
        total = 0
        for path, fd, rows in self.journal.orphans():
            written, kept = self._write(rows, {}) if rows else (0, [])
            if kept:
                os.close(fd)  # unlocked: a later try writes it
                continue
            self.journal.discard(path, fd)
            total += written
            log.warning("ledger: %d rows recovered from %s", len(rows), path)
        self.recovered += total
        return total

    def start(self) -> None:
        self.recover()
        self._greenlets = [
            every(lambda: self.flush_interval_s, self.flush, "ledger flush"),
            every(lambda: RECOVER_EVERY_S, self.recover, "ledger journal recovery")]

    def close(self) -> None:
        """Stop the flusher and write what is left (graceful shutdown)."""
        for greenlet in self._greenlets:
            greenlet.kill()
        self._greenlets = []
        for _ in range(3):
            self.flush()
            if not self._rows:
                if self.journal is not None:
                    self.journal.close()
                return
        log.error("ledger: %d rows could not be written at shutdown; they stay in the "
                  "journal for the next start", len(self._rows))


def usage_summary(db, user_id: str | None, group_by: str, start_day: str | None = None,
                  end_day: str | None = None, key_id: str | None = None) -> list[dict]:
    """Requests, tokens and cost grouped by day, model or key (or several: "day,model,key",
    one row per combination)."""
    names = group_by.split(",")
    columns = [GROUPS[name] for name in names]
    where, params = [], []
    for clause, value in (("user_id = ?", user_id), ("day >= ?", start_day),
                          ("day <= ?", end_day), ("key_id = ?", key_id)):
        if value is not None:
            where.append(clause)
            params.append(value)
    grouped = ", ".join(columns)
    sql = (f"SELECT {', '.join(f'{c} AS g{i}' for i, c in enumerate(columns))}, "
           "COUNT(*) AS requests, SUM(prompt_tokens) AS prompt_tokens,"
           " SUM(completion_tokens) AS completion_tokens, SUM(cached_tokens) AS cached_tokens,"
           " SUM(cost_usd) AS cost_usd FROM usage_ledger"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" GROUP BY {grouped} ORDER BY {grouped}")
    return [{**{name: r[f"g{i}"] for i, name in enumerate(names)}, "requests": r["requests"],
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
