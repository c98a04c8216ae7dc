"""Accounts, API keys and the usage ledger in SQL: SQLite (embedded default) or PostgreSQL."""
