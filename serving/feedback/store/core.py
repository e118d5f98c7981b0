"""What the SQLite and PostgreSQL stores share below their queries: a connection per thread, transactions,
every statement timed and watched, and a database's outage raised as StoreUnavailable, after which every
connection is replaced on next use."""

import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from serving.feedback.store.interface import FeedbackStore
from serving.feedback.store.records import StoreUnavailable


def plain(value):
    """A column's value as Python compares it: PostgreSQL's BYTEA arrives as memoryview."""
    return bytes(value) if isinstance(value, memoryview) else value


class SQLCore(FeedbackStore):
    """The connections and statements of a SQL store. Every query is written once, with SQLite's ? placeholders
    (serving.feedback.store.queries); each database (sqlite, postgres) says how to connect and run them."""

    _PING: str  # the cheapest statement that needs the database
    _BEGIN = "BEGIN"

    def __init__(self):
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, Any]] = []
        self._lock = threading.Lock()
        self._generation = 0  # raised at each outage: connections of an older generation are replaced
        self.clock: Callable[[], float] = time.time  # what review leases are measured by; tests set their own
        # what a watcher (serving.metrics) is told: each statement with its seconds, each SQLite commit group's size
        self.on_statement: Callable[[str, float], None] = lambda sql, seconds: None
        self.on_group: Callable[[int], None] = lambda size: None

    @abstractmethod
    def _connect(self):
        """A new connection that commits each statement unless in _begin()."""

    @abstractmethod
    def _run(self, sql: str, args=()):
        """A cursor over the result of sql on this thread's connection."""

    @contextmanager
    def _begin(self):
        """The statements in it commit together, or not at all. Plain statements rather than the drivers'
        transaction helpers, so that BEGIN and COMMIT are bounded in time as every other statement is."""
        self._run(self._BEGIN)
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._run("COMMIT")

    @abstractmethod
    def _rollback(self) -> None:
        """End this thread's transaction, if one is open, without its changes."""

    @property
    @abstractmethod
    def where(self) -> str:
        """The database, for messages: never its password."""

    @contextmanager
    def _outage_is_unavailable(self):
        """The database's outage errors as StoreUnavailable; every connection is replaced after one."""
        try:
            yield
        except Exception as e:
            if not self._is_outage(e):
                raise
            with self._lock:
                self._generation += 1
            raise StoreUnavailable(f"{self.where} is unavailable: {self._reason(e)}") from e

    @abstractmethod
    def _is_outage(self, e: Exception) -> bool:
        """True for the database's errors that mean it cannot serve now (not our own mistakes)."""

    def _reason(self, e: Exception) -> str:
        return (str(e).strip().splitlines() or [type(e).__name__])[0]

    def _execute(self, sql: str, args=()):
        started = time.perf_counter()
        try:
            with self._outage_is_unavailable():
                return self._run(sql, args)
        finally:
            self.on_statement(sql, time.perf_counter() - started)

    @contextmanager
    def _transaction(self):
        if getattr(self._local, "in_transaction", False):  # inside another: its statements commit with that one
            yield
            return
        with self._outage_is_unavailable():
            self._db()  # the connection the whole transaction runs on (_db keeps it until the end)
            self._local.in_transaction = True
            try:
                with self._begin():
                    yield
            finally:
                self._local.in_transaction = False

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is not None and getattr(self._local, "in_transaction", False):
            return db  # a transaction runs on one connection to its end, whatever happens elsewhere
        # psycopg marks a connection the server dropped closed; after an outage, every connection is suspect
        if db is None or getattr(db, "closed", False) or self._local.generation != self._generation:
            generation = self._generation
            db = self._connect()
            self._local.db, self._local.generation = db, generation
            me = threading.current_thread()
            with self._lock:  # close what ended threads (or this one's dropped connection) left, so none pile up
                for thread, old in self._connections:
                    if thread is me or not thread.is_alive():
                        old.close()
                self._connections = [(t, c) for t, c in self._connections if t is not me and t.is_alive()]
                self._connections.append((me, db))
        return db

    def ping(self) -> None:
        self._execute(self._PING).fetchone()

    def close(self) -> None:
        with self._lock:
            for _, db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
