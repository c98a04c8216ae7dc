"""Versioned schema migrations, applied in order at start (idempotent, safe to race)."""

import time

# (version, description, statements). {serial} is the dialect's auto-increment key.
MIGRATIONS = [
    (1, "users, API keys and the usage ledger", [
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE,
            created DOUBLE PRECISION NOT NULL,
            last_used DOUBLE PRECISION,
            revoked DOUBLE PRECISION,
            requests_per_minute INTEGER,
            tokens_per_minute INTEGER,
            monthly_budget_usd DOUBLE PRECISION,
            allowed_models TEXT)""",
        "CREATE INDEX api_keys_user ON api_keys (user_id)",
        """CREATE TABLE usage_ledger (
            id {serial},
            request_id TEXT NOT NULL,
            key_id TEXT,
            user_id TEXT,
            model TEXT NOT NULL,
            backend TEXT,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            status TEXT NOT NULL,
            http_status INTEGER NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL,
            ttft_ms DOUBLE PRECISION,
            created DOUBLE PRECISION NOT NULL,
            day TEXT NOT NULL)""",
        "CREATE INDEX usage_ledger_key_day ON usage_ledger (key_id, day)",
        "CREATE INDEX usage_ledger_user_day ON usage_ledger (user_id, day)",
    ]),
    (2, "backends drained by an operator, shared by every worker and replica", [
        """CREATE TABLE backend_drains (
            name TEXT PRIMARY KEY,
            drained_at DOUBLE PRECISION NOT NULL)""",
    ]),
    (3, "ledger rows carry a unique entry id, so a replayed worker journal adds nothing", [
        "ALTER TABLE usage_ledger ADD COLUMN entry_id TEXT",
        "CREATE UNIQUE INDEX usage_ledger_entry ON usage_ledger (entry_id)",
    ]),
    (4, "the web console: sessions, sign-in failures and invitations", [
        """CREATE TABLE console_sessions (
            token_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            csrf_token TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX console_sessions_user ON console_sessions (user_id)",
        """CREATE TABLE signin_failures (
            subject TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX signin_failures_subject ON signin_failures (subject, at)",
        """CREATE TABLE invites (
            code_hash TEXT PRIMARY KEY,
            prefix TEXT NOT NULL,
            created_by TEXT NOT NULL REFERENCES users(id),
            created DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL,
            used_by TEXT REFERENCES users(id),
            used_at DOUBLE PRECISION)""",
    ]),
]

_SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}


def migrate(db) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
               "version INTEGER PRIMARY KEY, description TEXT, applied DOUBLE PRECISION)")
    applied = []
    with db.transaction() as cur:
        if db.dialect == "postgresql":  # replicas starting together take turns
            cur.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
        done = {row["version"] for row in cur.query("SELECT version FROM schema_migrations")}
        for version, description, statements in MIGRATIONS:
            if version in done:
                continue
            for statement in statements:
                cur.execute(statement.replace("{serial}", _SERIAL[db.dialect]))
            cur.execute("INSERT INTO schema_migrations (version, description, applied) "
                        "VALUES (?, ?, ?)", (version, description, time.time()))
            applied.append(version)
    return applied
