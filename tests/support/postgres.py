"""A private PostgreSQL server (Debian's binaries) on a free port, for the test session.

initdb and pg_ctl refuse to run as root, so as root they run as the `postgres` user
on a data directory that user owns. Nothing touches a cluster already on the machine.
"""

import glob
import os
import shutil
import subprocess
import tempfile

from .processes import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: apt-get install postgresql")
    return found[-1]


def _as_postgres(argv):
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)


class PostgresServer:
    """initdb + pg_ctl start on a free port; .url() gives a database URL."""

    def __init__(self):
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="inferegator-pg-")
        self.data = os.path.join(self.root, "data")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        _as_postgres([_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8"])
        _as_postgres([_bin("pg_ctl"), "-D", self.data, "-w", "-t", "60", "-l",
                      os.path.join(self.root, "log"), "-o",
                      f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                      "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                      "-c max_connections=200", "start"])
        self._databases = 0

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            _as_postgres([_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
