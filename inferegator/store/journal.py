"""A per-worker, append-only journal of usage-ledger rows not yet in the database.

Each row is appended with one ``write`` before its response ends; the page cache keeps it
if the worker is killed (kill -9, OOM), and the next worker to start replays what a dead
one left. Segments are locked (flock) by the process that writes them, so a segment whose
lock can be taken belongs to a dead process: the kernel drops a process's locks when it
dies, whatever its pid becomes. Rows carry a unique ``entry_id``, so a segment replayed
after its rows were written already adds nothing.
"""

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import uuid

log = logging.getLogger("inferegator.ledger")
_SUFFIX = ".jsonl"
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def journal_dir(storage_url: str, configured: str = "") -> str:
    """Where the journals of this database live: the configured folder, else beside an
    SQLite file, else under the temporary directory, named after the database."""
    if configured:
        return configured
    if storage_url.startswith("sqlite:///"):
        return os.path.abspath(storage_url[len("sqlite:///"):]) + ".ledger-journal"
    digest = hashlib.sha256(storage_url.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"inferegator-journal-{digest}")


class LedgerJournal:
    """This process's journal segments, and recovery of dead processes' segments."""

    def __init__(self, directory: str):
        self.directory = directory
        self._fd = None
        self._path = None
        self._sealed: list[tuple[str, int]] = []  # segments whose rows await the database

    def append(self, row: tuple) -> None:
        if self._fd is None:
            self._open()
        os.write(self._fd, _ENCODE(row).encode() + b"\n")

    def _open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        name = os.path.join(self.directory, f"ledger-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        # Locked before it gets the name that recovery looks for, so it is never taken for
        # a dead process's segment.
        fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(name + ".tmp", name + _SUFFIX)
        self._fd, self._path = fd, name + _SUFFIX

    def seal(self) -> None:
        """Rows appended from now on go to a new segment; the current one's rows are being
        written to the database."""
        if self._fd is not None:
            self._sealed.append((self._path, self._fd))
            self._fd = self._path = None

    def sealed_written(self) -> None:
        """Every sealed segment's rows are in the database: remove the segments."""
        for path, fd in self._sealed:
            _remove(path, fd)
        self._sealed = []

    def close(self) -> None:
        """Shutdown after a complete flush: nothing of this process's is left to keep."""
        self.seal()
        self.sealed_written()

    def orphans(self):
        """(path, fd, rows) of each segment whose process died; the caller holds its lock
        until ``discard`` (or closes fd to leave it for a later try)."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(_SUFFIX):
                continue
            path = os.path.join(self.directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # recovered by another process meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live process's segment
            if not os.path.exists(path):  # recovered and removed between listdir and lock
                os.close(fd)
                continue
            yield path, fd, _read_rows(fd, path)

    @staticmethod
    def discard(path: str, fd: int) -> None:
        _remove(path, fd)


def _read_rows(fd: int, path: str) -> list[tuple]:
    with os.fdopen(os.dup(fd), "rb") as f:
        data = f.read()
    rows = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            rows.append(tuple(json.loads(line)))
        except ValueError:  # a torn last line: the process died inside the write
            log.error("ledger journal %s: an unreadable line was skipped", path)
    return rows


def _remove(path: str, fd: int) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)
