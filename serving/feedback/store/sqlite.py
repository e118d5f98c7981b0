"""The store in a SQLite file: WAL mode, synchronous=FULL, one writer thread that commits concurrent
submissions together (GroupCommit), file locks beside the database, online backup."""

import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from serving import settings
from serving.feedback.store.queries import SQLStore
from serving.feedback.store.records import Item, StoreUnavailable
from serving.feedback.store.schema import MIGRATIONS, SCHEMA_VERSION, check_version


class GroupCommit:
    """One thread that writes what other threads submit, as many at a time as are waiting (at most batch):
    write_many(items) returns one answer or exception per item, after its transaction committed; an exception
    of write_many itself (an outage) answers every item of the group. Every submission is answered, the
    ones queued when close() is called included.

    While submissions come in concurrently (the last group had more than one), a group waits up to linger
    seconds for more: each commit costs an fsync and CPU of its own, so fewer, larger groups take less of
    both per submission. A lone caller waits only right after concurrent submissions, once."""

    def __init__(self, write_many: Callable[[list[Item]], list], batch: int = 64, linger: float = 0.0):
        self.write_many, self.batch, self.linger = write_many, batch, linger
        self._queue: queue.Queue[tuple[Item, Future] | None] = queue.Queue()
        self._lock = threading.Lock()  # a submission is queued before close()'s end mark, or refused
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> tuple[str, bool]:
        done: Future = Future()
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the feedback store is closed")
            self._queue.put((item, done))
        return done.result()

    def _run(self) -> None:
        last = 1  # the size of the last group
        while (first := self._queue.get()) is not None:
            group = [first]
            until = time.monotonic() + (self.linger if last > 1 else 0.0)
            while len(group) < self.batch:
                try:
                    more = self._queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:  # closing: answer what was taken, then stop
                    self._queue.put(None)
                    break
                group.append(more)
            last = len(group)
            try:
                answers = self.write_many([item for item, _ in group])
            except BaseException as e:  # the writer goes on: the next group may find the database back
                answers = [_each(e) for _ in group]
            for (_, done), answer in zip(group, answers):
                if isinstance(answer, Exception):
                    done.set_exception(answer)
                else:
                    done.set_result(answer)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()


def _each(error: BaseException) -> BaseException:
    """An exception of its own for each thread that raises it (tracebacks grow on a shared one)."""
    if isinstance(error, StoreUnavailable):
        return StoreUnavailable(str(error))
    return error


class SQLiteStore(SQLStore):
    # Result codes (the low byte of extended ones) of a database that cannot serve now: busy or locked past the
    # timeout, out of memory, read-only, I/O error, disk full, cannot open. Others (no such table, a syntax
    # error) are our own mistakes.
    _OUTAGE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14})
    _PING = "SELECT COUNT(*) FROM sqlite_master"  # reads the file, unlike SELECT 1
    _BEGIN = "BEGIN IMMEDIATE"  # writers queue here, so what a transaction reads stays true until it commits

    def _is_outage(self, e: Exception) -> bool:
        code = getattr(e, "sqlite_errorcode", None)
        return isinstance(e, sqlite3.OperationalError) and code is not None and code & 0xFF in self._OUTAGE_CODES

    def __init__(self, path: str | Path, group_linger: float = settings.STORE_GROUP_LINGER_S):
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner_only()
        self._migrate()
        self._writer = GroupCommit(self._write_many, linger=group_linger)

    def submit(self, item: Item) -> tuple[str, bool]:
        """As the other stores do, but every submission goes through one writer, which commits all that wait
        in one transaction (one fsync): SQLite has one writer at a time anyway, and taking turns for its lock
        costs more than the writes."""
        return self._writer.submit(self._new(item))

    def _write_many(self, items: list[Item]) -> list[tuple[str, bool] | Exception]:
        """Each item written in a savepoint of one transaction: what fails for one item (a conflict, a malformed
        map) undoes that item only; an outage fails them all. The answers count once the transaction has
        committed."""
        answers: list[tuple[str, bool] | Exception] = []
        self.on_group(len(items))
        with self._transaction():
            for item in items:
                self._execute("SAVEPOINT item")
                try:
                    answers.append(self._write(item))
                except StoreUnavailable:
                    raise
                except Exception as e:
                    self._execute("ROLLBACK TO item")
                    answers.append(e)
                self._execute("RELEASE item")
        return answers

    def close(self) -> None:
        self._writer.close()
        super().close()

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A file lock beside the database file (<file>.<name>.lock): every process on this machine that uses
        the database sees it; the kernel releases it when the process dies."""
        path = Path(f"{self.path}.{name}.lock")
        with open(os.open(path, os.O_CREAT | os.O_RDWR, 0o600), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    def _owner_only(self) -> None:
        """The database (images, authors) readable by its owner only: created so, and tightened if it is not.
        SQLite gives its -wal and -shm files the database file's permissions."""
        os.close(os.open(self.path, os.O_CREAT | os.O_RDONLY, 0o600))
        for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if path.exists() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
                path.chmod(0o600)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # OK means on disk, not only in the OS's cache
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @property
    def where(self) -> str:
        return f"SQLite database {self.path}"

    def _run(self, sql: str, args=()) -> sqlite3.Cursor:
        return self._db().execute(sql, args)

    def _rollback(self) -> None:
        db = self._db()
        if db.in_transaction:
            db.execute("ROLLBACK")

    def _migrate(self) -> None:
        # DDL is transactional here too: a failed migration leaves the previous version; and a second opener
        # waits at BEGIN IMMEDIATE, then finds the schema current
        with self._transaction():
            version = self._execute("PRAGMA user_version").fetchone()[0]
            check_version(version, str(self.path))
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        self._execute(statement)
                self._execute(f"PRAGMA user_version={v + 1}")

    def integrity(self) -> str:
        return self._db().execute("PRAGMA integrity_check").fetchone()[0]

    def backup(self, target: str | Path) -> None:
        """A consistent copy of the whole database into the file target, while the service goes on writing
        (SQLite's online backup), readable by its owner only."""
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
        with sqlite3.connect(target) as copy:
            self._db().backup(copy)
        copy.close()
