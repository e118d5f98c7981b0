"""The store in a PostgreSQL database: bounded connecting and statements (AnswerDeadline), TCP keepalive,
advisory locks, migrations serialised across openers."""

import hashlib
import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from serving import settings
from serving.feedback.store.queries import SQLStore
from serving.feedback.store.records import StoreUnavailable
from serving.feedback.store.schema import POSTGRES_MIGRATIONS, SCHEMA_VERSION, check_version

_SCHEMA_LOCK = 0x61626E  # PostgreSQL advisory lock id ("abn") that serialises migrations


def _lock_id(name: str) -> int:
    """The PostgreSQL advisory lock id of an exclusive() name: a signed 64-bit number of its hash."""
    return int.from_bytes(hashlib.sha256(f"abn:{name}".encode()).digest()[:8], "big", signed=True)


class AnswerDeadline:
    """Ends a statement that has had no answer for seconds by shutting its connection's socket down, so that
    the driver fails at once with the connection lost. A paused or cut-off server answers nothing (its own
    statement_timeout cannot fire) and the kernel still acknowledges what is sent, so nothing else would end
    the wait. One thread watches every statement in flight. seconds None: no deadline."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self._armed: dict[int, tuple[float, socket.socket]] = {}  # statement -> (deadline, its socket)
        self._fired: set[int] = set()
        self._lock = threading.Lock()
        self._count = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def bound(self, fd: int):
        if self.seconds is None:
            yield
            return
        # a descriptor of our own for the connection's socket: the watcher never touches a number that the
        # connection closed and something else reused
        sock = socket.socket(fileno=os.dup(fd))
        with self._lock:
            token = next(self._count)
            self._armed[token] = (time.monotonic() + self.seconds, sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="store-answer-deadline", daemon=True)
                self._thread.start()
        try:
            yield
        except psycopg.OperationalError as e:
            if token in self._fired:
                raise psycopg.OperationalError(
                    f"no answer within {self.seconds:g} s (the server may be paused or cut off)"
                ) from e
            raise
        finally:
            # a statement that answered just as its deadline passed may have lost its socket all the same: the
            # next statement on that connection then fails as an outage, and the connections are replaced
            with self._lock:
                self._armed.pop(token, None)
                self._fired.discard(token)
            sock.close()

    def _watch(self) -> None:
        stop, seconds = self._stop, self.seconds
        assert seconds is not None  # bound() starts no watcher without a deadline
        while not stop.wait(min(seconds / 4, 0.5)):
            with self._lock:
                now = time.monotonic()
                for token, (deadline, sock) in list(self._armed.items()):
                    if now >= deadline:
                        del self._armed[token]
                        self._fired.add(token)
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:  # the connection is gone already
                            pass

    def close(self) -> None:
        """Stop the watcher; the next bound() starts another (a closed store may be used again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            stop, self._stop = self._stop, threading.Event()
        stop.set()
        if thread is not None:
            thread.join()


# TCP keepalive on every PostgreSQL connection, on this side (libpq's keepalives_*) and on the server's
# (tcp_keepalives_*): a peer cut off is noticed after idle + interval * count seconds even on a connection that
# sends nothing, such as the one that holds exclusive()'s lock for a whole retraining run (the server then ends
# its session and releases the lock).
KEEPALIVE = {"idle": 30, "interval": 10, "count": 3}
# A statement with no answer ends on this side this long after the server's statement_timeout would have ended it.
ANSWER_MARGIN_S = settings.STORE_ANSWER_DEADLINE_S - settings.STORE_STATEMENT_TIMEOUT_S


class PostgresStore(SQLStore):
    """The store in a PostgreSQL database: postgresql://user:password@host:port/database. Connecting and
    each statement are bounded in time (settings), unless the URL sets connect_timeout or statement_timeout
    (options=-c statement_timeout=...; or PGOPTIONS); a statement with no answer at all ends after
    answer_deadline seconds (AnswerDeadline), by default ANSWER_MARGIN_S after the statement_timeout in force
    (none when it is 0). Connections keep alive by KEEPALIVE, unless the URL says otherwise."""

    _PING = "SELECT 1"

    def _is_outage(self, e: Exception) -> bool:
        # the server gone or refusing, a connection dropped, a statement timed out, out of disk or memory
        return isinstance(e, psycopg.OperationalError)

    def __init__(self, url: str, answer_deadline: float | None = None):
        super().__init__()
        self._deadline = AnswerDeadline(answer_deadline or settings.STORE_ANSWER_DEADLINE_S)
        try:
            info = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise ValueError(f"bad PostgreSQL URL: {e}") from None
        self._url = url
        self._password = str(info["password"]) if info.get("password") else None
        self._where = (
            f"PostgreSQL database {info.get('dbname') or info.get('user') or '(default)'!r} at "
            f"{info.get('host') or 'the local socket'}:{info.get('port') or 5432}"
        )
        self._connect_args: dict = {}
        if "connect_timeout" not in info:
            self._connect_args["connect_timeout"] = settings.STORE_CONNECT_TIMEOUT_S
        # the URL's options (else PGOPTIONS, which an options argument would replace), and ours where they set none
        options = str(info.get("options") or os.environ.get("PGOPTIONS", ""))
        ours = {
            "statement_timeout": settings.STORE_STATEMENT_TIMEOUT_S * 1000,
            **{f"tcp_keepalives_{name}": value for name, value in KEEPALIVE.items()},
        }
        for name, value in ours.items():
            if not re.search(name.replace("_", "[_-]"), options):  # -c name=... or --name=... (with dashes)
                options += f" -c {name}={value}"
        self._connect_args["options"] = options.strip()
        for name, value in {"keepalives": 1, **{f"keepalives_{n}": v for n, v in KEEPALIVE.items()}}.items():
            if name not in info:
                self._connect_args[name] = value
        if answer_deadline is None:  # the server's statement_timeout, asked under the default deadline
            seconds = self._answer_deadline()
            self._deadline.close()
            self._deadline = AnswerDeadline(seconds)
        self._migrate()

    def _answer_deadline(self) -> float | None:
        """ANSWER_MARGIN_S after the statement_timeout in force (the URL's, or ours); None when it is 0 (none):
        a statement may then take as long as it takes."""
        setting = self._execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'").fetchone()[0]
        milliseconds = float(setting)
        return milliseconds / 1000 + ANSWER_MARGIN_S if milliseconds else None

    @property
    def where(self) -> str:
        return self._where

    def _reason(self, e: Exception) -> str:
        reason = super()._reason(e)
        return reason.replace(self._password, "***") if self._password else reason

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._url, autocommit=True, **self._connect_args)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"cannot connect to {self._where}: {self._reason(e)}") from None

    def _run(self, sql: str, args=()) -> psycopg.Cursor:
        db = self._db()
        # psycopg's placeholder is %s (no query here has a literal ? or %); no arguments, no placeholders, so
        # a migration can hold several statements. The cursor holds the whole result once execute returns.
        with self._deadline.bound(db.fileno()):
            return db.execute(sql.replace("?", "%s"), args or None)

    def close(self) -> None:
        super().close()
        self._deadline.close()

    def _rollback(self) -> None:
        db = self._db()
        if db.closed or db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return  # nothing open, or the connection is lost and the server rolls back by itself
        try:
            self._run("ROLLBACK")
        except psycopg.OperationalError:
            pass  # the error that led here is the one to report

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A PostgreSQL session advisory lock on a connection of its own, held while it is open: every machine
        that uses the database sees it, and the server releases it when the connection ends (the process
        died, or the machine is cut off)."""
        db = self._connect()
        try:
            with self._outage_is_unavailable(), self._deadline.bound(db.fileno()):
                row = db.execute("SELECT pg_try_advisory_lock(%s)", (_lock_id(name),)).fetchone()
            yield bool(row and row[0])
        finally:
            db.close()

    def _migrate(self) -> None:
        with self._transaction():  # DDL is transactional here: a failed migration leaves the previous version
            # one opener migrates at a time; another waits here, then finds the schema current
            self._execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            self._execute("CREATE TABLE IF NOT EXISTS abn_schema (version INTEGER NOT NULL)")
            row = self._execute("SELECT version FROM abn_schema").fetchone()
            if row is None:
                self._execute("INSERT INTO abn_schema VALUES (0)")
            version = row[0] if row else 0
            check_version(version, self._where)
            for v in range(version, SCHEMA_VERSION):
                self._execute(POSTGRES_MIGRATIONS[v])
                self._execute("UPDATE abn_schema SET version = ?", (v + 1,))
