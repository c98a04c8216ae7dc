"""A small SQL connection pool that speaks SQLite and PostgreSQL with one placeholder style.

SQL in this package is written with ``?`` placeholders; for PostgreSQL they become
``%s``. Under gevent, SQLite calls are short and run inline; psycopg detects gevent's
monkey patching and waits cooperatively.
"""

import contextlib
import os
import sqlite3
import threading
from urllib.parse import urlsplit


class StoreError(Exception):
    """The storage URL is unusable or the database refused an operation."""


class Database:
    """Connections to one database, handed out one at a time per caller."""

    def __init__(self, url: str, pool_size: int = 4):
        self.url = url
        scheme = urlsplit(url).scheme
        if scheme == "sqlite":
            self.dialect = "sqlite"
            self._path = _sqlite_path(url)
            pool_size = 1  # SQLite has one writer; one connection avoids "database is locked"
        elif scheme in ("postgresql", "postgres"):
            self.dialect = "postgresql"
        else:
            raise StoreError(f"unsupported storage URL {url!r}: use sqlite:///path or "
                             "postgresql://user@host/db")
        self._free: list = []
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()

    def _connect(self):
        if self.dialect == "sqlite":
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL storage needs psycopg: "
                             "pip install 'inferegator[postgresql]'") from None
        return psycopg.connect(self.url, autocommit=True)

    @contextlib.contextmanager
    def connection(self):
        """A connection for the duration of the block (returned to the pool after)."""
        self._slots.acquire()
        try:
            with self._lock:
                conn = self._free.pop() if self._free else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            except Exception:
                if self.dialect == "postgresql" and conn.closed:
                    conn = None
                raise
            finally:
                if conn is not None:
                    with self._lock:
                        self._free.append(conn)
        finally:
            self._slots.release()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    @contextlib.contextmanager
    def transaction(self):
        """A cursor inside one transaction: committed at the end, rolled back on error."""
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            try:
                yield _Cursor(cur, self._sql, self.dialect)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def query(self, sql: str, params=()) -> list[dict]:
        """Rows as dicts."""
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute(self._sql(sql), params)
            return _rows(cur)

    def execute(self, sql: str, params=()) -> int:
        """Run one statement in its own transaction; the number of rows it touched."""
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute(self._sql(sql), params)
            return cur.rowcount

    def is_unique_violation(self, exc: Exception) -> bool:
        """True if exc is this database refusing a duplicate of a UNIQUE value."""
        if self.dialect == "sqlite":
            return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)
        return getattr(exc, "sqlstate", None) == "23505"

    def is_data_error(self, exc: Exception) -> bool:
        """True if the database refused the values themselves (a retry cannot help), not a
        connection or server failure (a retry may)."""
        if isinstance(exc, (UnicodeError, ValueError, TypeError, OverflowError)):
            return True
        if self.dialect == "sqlite":
            return isinstance(exc, (sqlite3.DataError, sqlite3.IntegrityError,
                                    sqlite3.InterfaceError, sqlite3.ProgrammingError))
        import psycopg

        return isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))

    def close(self) -> None:
        with self._lock:
            while self._free:
                self._free.pop().close()


class _Cursor:
    """A cursor that takes ``?`` placeholders whatever the dialect."""

    def __init__(self, cur, translate, dialect: str):
        self._cur = cur
        self._translate = translate
        self._dialect = dialect

    def execute(self, sql: str, params=()) -> int:
        self._cur.execute(self._translate(sql), params)
        return self._cur.rowcount

    def executemany(self, sql: str, rows) -> None:
        self._cur.executemany(self._translate(sql), rows)

    def insert_rows(self, table: str, columns, rows) -> None:
        """Insert many new rows at once: COPY on PostgreSQL (a tenth of executemany's CPU
        per row), where a duplicate of a unique value fails the whole batch; on SQLite an
        INSERT that skips duplicates."""
        names = ", ".join(columns)
        if self._dialect == "postgresql":
            with self._cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            self._cur.executemany(f"INSERT INTO {table} ({names}) VALUES "
                                  f"({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING",
                                  rows)

    def query(self, sql: str, params=()) -> list[dict]:
        self._cur.execute(self._translate(sql), params)
        return _rows(self._cur)


def _rows(cur) -> list[dict]:
    if cur.description is None:
        return []
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _sqlite_path(url: str) -> str:
    # sqlite:///relative.db, sqlite:////absolute.db, sqlite:///:memory: is refused (per-worker)
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        raise StoreError(f"storage URL {url!r} must name a file: sqlite:///path/to/file.db")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return path
