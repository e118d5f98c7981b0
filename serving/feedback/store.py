"""The feedback store: corrected maps, durable once accepted.

One interface (FeedbackStore), chosen by URL (open_store): the embedded default
is a SQLite file in WAL mode with synchronous=FULL, so a submission whose
transaction committed survives a crash of the process or the machine;
postgresql://... puts the same store in a PostgreSQL database. Images are stored
once, keyed by SHA-256. The schema is versioned (SQLite's PRAGMA user_version,
PostgreSQL's abn_schema table) and migrated on open. Each item keeps which
pixels its expert decided (one bit per pixel; none when every pixel was) and
its state: pending, consumed by a retraining run (and the version it
promoted), rejected, or withdrawn by its author, with the reason in words.

An outage of the database (the server gone, the file unreachable, the disk
full) raises StoreUnavailable, and every connection opened before it is
replaced on next use, so the store recovers by itself when the database does.
"""

import dataclasses
import fcntl
import hashlib
import itertools
import os
import queue
import re
import socket
import sqlite3
import threading
import time
import unicodedata
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from serving import settings

# Each entry moves the schema from version i to i + 1. It is written once for both databases, so a version
# means the same tables in both; {seq}, {blob} and {real} are the column types that differ.
_MIGRATIONS = [
    """
    CREATE TABLE images (sha256 TEXT PRIMARY KEY, data {blob} NOT NULL);
    CREATE TABLE feedback (
        seq {seq},
        id TEXT NOT NULL UNIQUE,
        idempotency_key TEXT UNIQUE,
        image_sha256 TEXT NOT NULL REFERENCES images(sha256),
        map_height INTEGER NOT NULL,
        map_width INTEGER NOT NULL,
        map_values {blob} NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        predicted_label TEXT NOT NULL DEFAULT '',
        prediction_id TEXT NOT NULL DEFAULT '',
        model_name TEXT NOT NULL DEFAULT '',
        model_version TEXT NOT NULL DEFAULT '',
        author TEXT NOT NULL DEFAULT '',
        created {real} NOT NULL,
        consumed_by TEXT
    );
    CREATE INDEX feedback_model ON feedback(model_name, consumed_by);
    CREATE INDEX feedback_created ON feedback(created);
    """,
    # experts, and the review queue: open_key (image and model) is set while an item is open, so an image
    # waits once per model; the prediction is stored as the service received it (abn.v1.Prediction)
    """
    CREATE TABLE experts (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, created {real} NOT NULL);
    CREATE TABLE review (
        seq {seq},
        id TEXT NOT NULL UNIQUE,
        open_key TEXT UNIQUE,
        image_sha256 TEXT NOT NULL REFERENCES images(sha256),
        model_name TEXT NOT NULL,
        predicted_label TEXT NOT NULL,
        prediction {blob} NOT NULL,
        priority {real} NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created {real} NOT NULL,
        claimed_by TEXT,
        lease_until {real},
        feedback_id TEXT
    );
    CREATE INDEX review_open ON review(feedback_id, priority);
    CREATE TABLE review_skips (review_id TEXT NOT NULL, expert TEXT NOT NULL, PRIMARY KEY (review_id, expert));
    """,
    # a correction a refused retraining run (or an operator) set aside: not pending, not consumed
    """
    ALTER TABLE feedback ADD COLUMN rejected_by TEXT;
    """,
    # which archive of each model is served: promotion writes it, every replica follows it
    """
    CREATE TABLE served (model_name TEXT PRIMARY KEY, archive TEXT NOT NULL, version TEXT NOT NULL,
                         updated {real} NOT NULL);
    """,
    # which pixels the expert decided (bits, row-major; NULL: all, as every older row), confirmations, a
    # correction its author took back (when), why an item is in its state, and the version its run promoted
    """
    ALTER TABLE feedback ADD COLUMN decided {blob};
    ALTER TABLE feedback ADD COLUMN confirmed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE feedback ADD COLUMN withdrawn {real};
    ALTER TABLE feedback ADD COLUMN reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE feedback ADD COLUMN promoted_version TEXT NOT NULL DEFAULT '';
    CREATE INDEX feedback_author ON feedback(author);
    """,
]
MIGRATIONS = [m.format(seq="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB", real="REAL") for m in _MIGRATIONS]
POSTGRES_MIGRATIONS = [
    m.format(seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", blob="BYTEA", real="DOUBLE PRECISION")
    for m in _MIGRATIONS
]
SCHEMA_VERSION = len(MIGRATIONS)
# An item's state, from its columns; the first that applies wins (as Item.state).
_STATE = (
    "CASE WHEN consumed_by IS NOT NULL THEN 'consumed' WHEN rejected_by IS NOT NULL THEN 'rejected' "
    "WHEN withdrawn IS NOT NULL THEN 'withdrawn' ELSE 'pending' END"
)
_PENDING = "consumed_by IS NULL AND rejected_by IS NULL AND withdrawn IS NULL"
STATES = {  # state -> the condition that selects it
    "pending": _PENDING,
    "consumed": "consumed_by IS NOT NULL",
    "rejected": "consumed_by IS NULL AND rejected_by IS NOT NULL",
    "withdrawn": "consumed_by IS NULL AND rejected_by IS NULL AND withdrawn IS NOT NULL",
}
WITHDRAWN_REASON = "withdrawn by its author"
_SCHEMA_LOCK = 0x61626E  # PostgreSQL advisory lock id ("abn") that serialises migrations


def _lock_id(name: str) -> int:
    """The PostgreSQL advisory lock id of an exclusive() name: a signed 64-bit number of its hash."""
    return int.from_bytes(hashlib.sha256(f"abn:{name}".encode()).digest()[:8], "big", signed=True)


class ConflictError(ValueError):
    """An idempotency key reused for a different submission."""


class NotFoundError(LookupError):
    """What a request names is not stored."""


class StateError(ConflictError):
    """A change that the item's state does not allow (withdrawing a consumed correction): the message says its
    state."""


class NotAuthorError(ConflictError):
    """What only an item's author may do (withdraw it; see it with an expert's token), asked by someone else."""


class ClaimError(ValueError):
    """A review item the caller does not hold, or cannot take: the message says who holds it or why."""


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or cannot write now; the message says which database and why."""


@dataclass
class Item:
    image: bytes
    attention: np.ndarray  # h x w float32 in [0, 1]
    label: str = ""
    predicted_label: str = ""
    prediction_id: str = ""
    model_name: str = ""
    model_version: str = ""
    author: str = ""
    idempotency_key: str = ""
    id: str = ""
    image_sha256: str = ""
    created: float = 0.0
    consumed_by: str | None = None
    rejected_by: str | None = None  # the run (or operator) that set it aside; pending when neither is set
    review_id: str = ""  # the review item this closes; its claim must be the author's
    decided: np.ndarray | None = None  # h x w bool, the pixels the expert decided; None: every pixel
    confirmed: bool = False  # the expert confirmed the model's map as it was
    withdrawn: float | None = None  # when its author took it back (while pending)
    reason: str = ""  # why it is in its state, in words (rejected, held back, withdrawn)
    promoted_version: str = ""  # the version the run that consumed it promoted

    @property
    def state(self) -> str:
        """pending, consumed, rejected or withdrawn."""
        if self.consumed_by is not None:
            return "consumed"
        if self.rejected_by is not None:
            return "rejected"
        return "withdrawn" if self.withdrawn is not None else "pending"


@dataclass
class ReviewEntry:
    """An item of the review queue. prediction: the serialized abn.v1.Prediction, opaque to the store."""

    image: bytes
    prediction: bytes
    model_name: str
    predicted_label: str
    priority: float
    reason: str = ""
    id: str = ""
    image_sha256: str = ""
    created: float = 0.0
    claimed_by: str | None = None
    lease_until: float | None = None
    feedback_id: str | None = None


@dataclass
class Expert:
    name: str
    created: float


@dataclass
class Served:
    """The archive (a file name in the shared model store) and version of a model that is served."""

    archive: str
    version: str
    updated: float


def token_hash(token: str) -> str:
    """What the store keeps of an expert's token. Tokens are 256 random bits, so a plain SHA-256 cannot be
    reversed by guessing; a slow password hash would only slow every call."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_plain_name(value: str) -> bool:
    """A class or model name that is also a safe folder name: no separators, no control characters, not . or .."""
    return value not in (".", "..") and not any(c in "/\\" or unicodedata.category(c) == "Cc" for c in value)


class FeedbackStore(ABC):
    @abstractmethod
    def submit(self, item: Item) -> tuple[str, bool]:
        """Store item durably; (id, created). A known idempotency key returns its id and False."""

    @abstractmethod
    def get(self, feedback_id: str) -> Item | None: ...

    @abstractmethod
    def items(
        self,
        since: float = 0.0,
        consumed: bool | None = None,
        model_name: str = "",
        with_data: bool = True,
        rejected: bool | None = None,
        author: str = "",
        state: str = "",
    ) -> Iterator[Item]:
        """Items oldest first. consumed=False: pending (neither consumed, rejected nor withdrawn); rejected=True:
        set aside; state: one of STATES; author: only theirs. with_data=False leaves out images, maps and masks."""

    @abstractmethod
    def stats(self, model_name: str = "", author: str = "") -> dict:
        """{"total", "by_state", "by_label", "by_model_version", "by_author", "confirmations", "pending_images",
        "conflicting_images"}, of model_name's and author's items when given."""

    @abstractmethod
    def mark_consumed(self, ids: list[str], run: str, version: str = "") -> int:
        """Record that run consumed these items (not withdrawn ones) and promoted version; the number marked."""

    @abstractmethod
    def mark_rejected(self, ids: list[str], by: str, reason: str = "") -> int:
        """Set these pending items aside (a refused run, or an operator), saying why; the number marked."""

    @abstractmethod
    def set_reason(self, ids: list[str], reason: str) -> int:
        """Say why these pending items were held back (consuming or rejecting them replaces it); the number
        changed."""

    @abstractmethod
    def withdraw(self, feedback_id: str, author: str) -> Item:
        """The item, taken back by its author while pending (without its image and map): retraining never uses
        it. NotFoundError when there is no such item, NotAuthorError when author is not its author,
        StateError when it is not pending."""

    @abstractmethod
    def requeue(self, ids: list[str]) -> int:
        """Make these rejected items pending again; the number changed."""

    @abstractmethod
    def ids_of(self, rejected: bool, author: str = "", rejected_by: str = "") -> list[str]:
        """The ids of pending (rejected=False) or rejected (True) items, of author and rejected by rejected_by
        when given. Withdrawn items are neither."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers now."""

    @abstractmethod
    def add_expert(self, name: str, token_sha256: str) -> None:
        """Record an expert by the hash of their token; ConflictError when the name is taken."""

    @abstractmethod
    def experts(self) -> list[Expert]: ...

    @abstractmethod
    def remove_expert(self, name: str) -> bool:
        """False when there was no such expert."""

    @abstractmethod
    def expert_for(self, token_sha256: str) -> str | None:
        """The name of the expert with this token hash."""

    @abstractmethod
    def add_review(self, entry: ReviewEntry) -> tuple[str, bool]:
        """Queue entry; (id, created). An image already open for the same model gives that item's id, False."""

    @abstractmethod
    def review_items(
        self,
        model_name: str = "",
        label: str = "",
        limit: int = settings.REVIEW_LIST_DEFAULT,
        viewer: str = "",
        hide_skipped: bool = False,
    ) -> list:
        """Open items not claimed by anyone but viewer, highest priority first, without their images;
        hide_skipped leaves out the items viewer skipped."""

    @abstractmethod
    def review_offered(self, expert: str, model_name: str = "", label: str = "") -> int:
        """How many open items claim_review would offer expert now: held by no one, not skipped by expert."""

    @abstractmethod
    def review_item(self, review_id: str) -> ReviewEntry | None: ...

    @abstractmethod
    def claim_review(
        self,
        expert: str,
        review_id: str = "",
        model_name: str = "",
        label: str = "",
        lease_s: float = settings.REVIEW_LEASE_S,
    ) -> ReviewEntry | None:
        """Claim the item named, or the open item of highest priority expert has not skipped, for lease_s
        seconds; None when no item waits. ClaimError when the item named is held by another or done,
        NotFoundError when there is no such item."""

    @abstractmethod
    def release_review(self, review_id: str, expert: str, skip: bool = True) -> None:
        """Give back expert's claim; after a skip, expert will not be offered the item again. ClaimError if not
        held, NotFoundError when there is no such item."""

    @abstractmethod
    def served(self, model_name: str) -> Served | None:
        """What promotion recorded last for model_name."""

    @abstractmethod
    def set_served(self, model_name: str, archive: str, version: str) -> None: ...

    @abstractmethod
    def served_models(self) -> list[str]: ...

    @abstractmethod
    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """A lock named name, for every process that uses this database: yields True while this process holds
        it, False when another does (without waiting). A process that dies releases it."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def restore(self, item: Item) -> tuple[str, bool]:
        """Store item as it is (as copying a store does), keeping its id, created time and consumed_by; (id, created) as
        submit answers, and (item.id, False) when that id is stored already."""


# How a conflict names the columns of _PAYLOAD: by the request's fields.
_FIELD_NAMES = {"image_sha256": "image", "map_height": "attention", "map_width": "attention", "map_values": "attention"}


def _plain(value):
    """A column's value as Python compares it: PostgreSQL's BYTEA arrives as memoryview."""
    return bytes(value) if isinstance(value, memoryview) else value


def pack_decided(decided: np.ndarray | None, shape: tuple[int, ...]) -> bytes | None:
    """What the store keeps of a mask of decided pixels: one bit per pixel, row-major; None when every pixel is
    decided, so that an all-decided mask and no mask are stored (and compared on a retry) alike."""
    if decided is None:
        return None
    mask = np.asarray(decided, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"decided: a {mask.shape} mask for a {shape} map")
    return None if mask.all() else np.packbits(mask, axis=None).tobytes()


def unpack_decided(packed, shape: tuple[int, int]) -> np.ndarray | None:
    if packed is None:
        return None
    return np.unpackbits(np.frombuffer(packed, np.uint8), count=shape[0] * shape[1]).reshape(shape).astype(bool)


def _check_version(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"feedback store {where} has schema version {version}, newer than this "
            f"program's {SCHEMA_VERSION}: upgrade the program"
        )


class _SQLStore(FeedbackStore):
    """What the SQLite and PostgreSQL stores share: a connection per thread, and every query but the
    migrations, written once with SQLite's ? placeholders."""

    _COLUMNS = (
        "f.id, f.idempotency_key, f.image_sha256, f.map_height, f.map_width, f.label, f.predicted_label, "
        "f.prediction_id, f.model_name, f.model_version, f.author, f.created, f.consumed_by, f.rejected_by, "
        "f.confirmed, f.withdrawn, f.reason, f.promoted_version"
    )
    _DATA = "i.data, f.map_values, f.decided"  # what with_data adds
    _PAGE = 200  # items() reads this many rows per query
    # The columns a submission's idempotency key vouches for: a retry must send the same.
    _PAYLOAD = ("image_sha256", "map_height", "map_width", "map_values", "label", "predicted_label", "prediction_id",
                "model_name", "model_version", "author", "decided", "confirmed")  # fmt: skip
    _STATE_COLUMNS = ("created", "consumed_by", "rejected_by", "withdrawn", "reason", "promoted_version")
    _INSERT = (
        f"INSERT INTO feedback (id, idempotency_key, {', '.join(_PAYLOAD)}, {', '.join(_STATE_COLUMNS)})"
        f" VALUES ({', '.join('?' * (len(_PAYLOAD) + len(_STATE_COLUMNS) + 2))}) ON CONFLICT DO NOTHING RETURNING id"
    )
    _BY_KEY = f"SELECT id, {', '.join(_PAYLOAD)} FROM feedback WHERE idempotency_key = ?"

    _PING: str  # the cheapest statement that needs the database
    _BEGIN = "BEGIN"

    def __init__(self):
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, Any]] = []
        self._lock = threading.Lock()
        self._generation = 0  # raised at each outage: connections of an older generation are replaced

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
        with self._outage_is_unavailable():
            return self._run(sql, args)

    @contextmanager
    def _transaction(self):
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

    def submit(self, item: Item) -> tuple[str, bool]:
        return self.restore(self._new(item))

    @staticmethod
    def _new(item: Item) -> Item:
        return dataclasses.replace(
            item,
            id=uuid.uuid4().hex,
            created=time.time(),
            consumed_by=None,
            rejected_by=None,
            withdrawn=None,
            reason="",
            promoted_version="",
        )

    def restore(self, item: Item) -> tuple[str, bool]:
        with self._transaction():  # a conflict raised inside rolls back the image inserted too
            return self._write(item)

    def _write(self, item: Item) -> tuple[str, bool]:
        """The statements of restore, inside a transaction the caller holds."""
        sha = hashlib.sha256(item.image).hexdigest()
        values = np.ascontiguousarray(item.attention, dtype="<f4")
        key = item.idempotency_key or None
        # what a retry must repeat exactly, in the order of _PAYLOAD
        payload = (sha, values.shape[0], values.shape[1], values.tobytes(), item.label, item.predicted_label,
                   item.prediction_id, item.model_name, item.model_version, item.author,
                   pack_decided(item.decided, values.shape), int(item.confirmed))  # fmt: skip
        self._execute("INSERT INTO images (sha256, data) VALUES (?, ?) ON CONFLICT DO NOTHING", (sha, item.image))
        # DO NOTHING when the key (or id) is taken, rather than an error: with PostgreSQL, a concurrent
        # submission with the same key waits here for the first to commit, then the lookup below finds it.
        state = (item.created, item.consumed_by, item.rejected_by, item.withdrawn, item.reason, item.promoted_version)
        inserted = self._execute(self._INSERT, (item.id, key, *payload, *state)).fetchall()
        if inserted:
            if item.review_id:
                self._close_review(item.review_id, item.author, item.id, sha)
            return item.id, True
        stored = key and self._execute(self._BY_KEY, (key,)).fetchone()
        if not stored:  # it is the id that is taken: this very item is stored already
            return item.id, False
        differ = [name for name, old, new in zip(self._PAYLOAD, stored[1:], payload) if _plain(old) != new]
        if differ:
            fields = ", ".join(_FIELD_NAMES.get(name, name) for name in dict.fromkeys(differ))
            raise ConflictError(
                f"idempotency_key {key!r} was used for another submission ({stored[0]}) with a different {fields}"
            )
        return stored[0], False

    def _item(self, row: tuple, data: tuple | None) -> Item:
        (fid, key, sha, h, w, label, predicted, pid, model, version, author, created, consumed, rejected,
         confirmed, withdrawn, reason, promoted) = row  # fmt: skip
        image, values, decided = data if data else (b"", None, None)
        attention = (
            np.frombuffer(values, dtype="<f4").reshape(h, w).copy()
            if values is not None
            else np.zeros((0, 0), np.float32)
        )
        return Item(
            image=image,
            attention=attention,
            label=label,
            predicted_label=predicted,
            prediction_id=pid,
            model_name=model,
            model_version=version,
            author=author,
            idempotency_key=key or "",
            id=fid,
            image_sha256=sha,
            created=created,
            consumed_by=consumed,
            rejected_by=rejected,
            decided=unpack_decided(decided, (h, w)),
            confirmed=bool(confirmed),
            withdrawn=withdrawn,
            reason=reason,
            promoted_version=promoted,
        )

    def get(self, feedback_id: str, with_data: bool = True) -> Item | None:
        data = f", {self._DATA}" if with_data else ""
        row = self._execute(
            f"SELECT {self._COLUMNS}{data} FROM feedback f JOIN images i ON i.sha256 = f.image_sha256 WHERE f.id = ?",
            (feedback_id,),
        ).fetchone()
        n = self._COLUMNS.count(",") + 1
        return None if row is None else self._item(row[:n], row[n:] if with_data else None)

    def items(
        self,
        since: float = 0.0,
        consumed: bool | None = None,
        model_name: str = "",
        with_data: bool = True,
        rejected: bool | None = None,
        author: str = "",
        state: str = "",
    ) -> Iterator[Item]:
        where = ["f.seq > ?", "f.created >= ?"]
        args: list[float | str] = [since]
        if consumed is not None:
            where.append(STATES["consumed"] if consumed else _PENDING)
        if rejected is not None:
            where.append("f.rejected_by IS NOT NULL" if rejected else "f.rejected_by IS NULL")
        if state:
            where.append(STATES[state])
        for column, value in (("model_name", model_name), ("author", author)):
            if value:
                where.append(f"f.{column} = ?")
                args.append(value)
        data = f", {self._DATA}" if with_data else ""
        query = (
            f"SELECT f.seq, {self._COLUMNS}{data} FROM feedback f JOIN images i ON i.sha256 = f.image_sha256 "
            f"WHERE {' AND '.join(where)} ORDER BY f.seq LIMIT {self._PAGE}"
        )
        n = self._COLUMNS.count(",") + 2
        last = 0
        while True:  # a page per query, so no query stays open while the caller works (and uses the store)
            rows = self._execute(query, [last, *args]).fetchall()
            for row in rows:
                yield self._item(row[1:n], row[n:] if with_data else None)
            if len(rows) < self._PAGE:
                return
            last = rows[-1][0]

    @staticmethod
    def _filters(model_name: str, author: str) -> tuple[list[str], list[str]]:
        """The conditions (and their arguments) that keep model_name's and author's items, when given."""
        named = [(column, value) for column, value in (("model_name", model_name), ("author", author)) if value]
        return [f"{column} = ?" for column, _ in named], [value for _, value in named]

    def stats(self, model_name: str = "", author: str = "") -> dict:
        conditions, args = self._filters(model_name, author)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""

        def counts(expr: str) -> dict:  # sorted here: the databases' collations would order differently
            return dict(sorted(self._execute(f"SELECT {expr}, COUNT(*) FROM feedback {where} GROUP BY 1", args)))

        total, confirmations = self._execute(
            f"SELECT COUNT(*), COALESCE(SUM(confirmed), 0) FROM feedback {where}", args
        ).fetchone()
        return {
            "total": total,
            "by_state": counts(_STATE),
            "by_label": counts("CASE WHEN label != '' THEN label ELSE predicted_label END"),
            "by_model_version": counts("model_name || ':' || model_version"),
            "by_author": counts("author"),
            "confirmations": int(confirmations),
            **self._pending_images(model_name, author),
        }

    def _pending_images(self, model_name: str, author: str = "") -> dict:
        """Distinct images among the pending corrections (per model), and those that different authors corrected
        differently (label or map): retraining counts an image once, its latest correction winning."""
        conditions, args = self._filters(model_name, author)
        where = " AND ".join([_PENDING, *conditions])
        row = self._execute(
            "SELECT COUNT(*), COALESCE(SUM(conflict), 0) FROM (SELECT CASE WHEN COUNT(DISTINCT author) > 1 AND "
            "(COUNT(DISTINCT CASE WHEN label != '' THEN label ELSE predicted_label END) > 1 "
            "OR COUNT(DISTINCT map_values) > 1) THEN 1 ELSE 0 END AS conflict "
            f"FROM feedback WHERE {where} GROUP BY model_name, image_sha256) images",
            args,
        ).fetchone()
        return {"pending_images": int(row[0]), "conflicting_images": int(row[1])}

    def _update_each(self, sql: str, first: tuple, ids: list[str]) -> int:
        with self._transaction():
            return sum(self._execute(sql, (*first, i)).rowcount for i in ids)

    def mark_consumed(self, ids: list[str], run: str, version: str = "") -> int:
        sql = (
            "UPDATE feedback SET consumed_by = ?, promoted_version = ?, reason = '' "
            "WHERE consumed_by IS NULL AND withdrawn IS NULL AND id = ?"
        )
        return self._update_each(sql, (run, version), ids)

    def mark_rejected(self, ids: list[str], by: str, reason: str = "") -> int:
        sql = f"UPDATE feedback SET rejected_by = ?, reason = ? WHERE {_PENDING} AND id = ?"
        return self._update_each(sql, (by, reason), ids)

    def set_reason(self, ids: list[str], reason: str) -> int:
        return self._update_each(f"UPDATE feedback SET reason = ? WHERE {_PENDING} AND id = ?", (reason,), ids)

    def requeue(self, ids: list[str]) -> int:
        sql = "UPDATE feedback SET rejected_by = NULL, reason = '' WHERE rejected_by IS NOT NULL AND id = ?"
        return self._update_each(sql, (), ids)

    def withdraw(self, feedback_id: str, author: str) -> Item:
        with self._transaction():
            withdrawn = self._execute(
                f"UPDATE feedback SET withdrawn = ?, reason = ? WHERE id = ? AND author = ? AND {_PENDING}",
                (time.time(), WITHDRAWN_REASON, feedback_id, author),
            ).rowcount
            item = self.get(feedback_id, with_data=False)
        if item is None:
            raise NotFoundError(f"id: no feedback {feedback_id[:64]!r}")
        if withdrawn:
            return item
        if item.author != author:
            raise NotAuthorError(
                f"correction {item.id} is {item.author or 'nobody'}'s, not {author or 'nobody'}'s: only its author "
                "may withdraw it"
            )
        by = {"consumed": f" by run {item.consumed_by}", "rejected": f" by {item.rejected_by}"}.get(item.state, "")
        raise StateError(
            f"correction {item.id} is {item.state}{by}, no longer pending: only a pending correction can be withdrawn"
        )

    def ids_of(self, rejected: bool, author: str = "", rejected_by: str = "") -> list[str]:
        where = ["rejected_by IS NOT NULL" if rejected else _PENDING]
        args = []
        for column, value in (("author", author), ("rejected_by", rejected_by)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._execute(f"SELECT id FROM feedback WHERE {' AND '.join(where)} ORDER BY seq", args)
        return [r[0] for r in rows]

    def _close_review(self, review_id: str, author: str, feedback_id: str, image_sha256: str) -> None:
        closed = self._execute(
            "UPDATE review SET feedback_id = ?, open_key = NULL "
            "WHERE id = ? AND claimed_by = ? AND feedback_id IS NULL AND image_sha256 = ?",
            (feedback_id, review_id, author, image_sha256),
        ).rowcount
        if not closed:
            self._not_held(review_id, author)
            raise ClaimError(f"review_id: the correction's image is not review item {review_id}'s image")

    def _not_held(self, review_id: str, expert: str, claiming: bool = False) -> None:
        """Raise why expert cannot have (claiming) or does not hold the item; return when they hold it."""
        row = self._execute("SELECT claimed_by, feedback_id FROM review WHERE id = ?", (review_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"review_id: no review item {review_id[:64]!r}")
        holder, feedback_id = row
        if feedback_id is not None:
            raise ClaimError(f"review item {review_id} was closed already, by correction {feedback_id}")
        if claiming:
            raise ClaimError(f"review item {review_id} is claimed by {holder!r} until its lease expires: take another")
        if holder is None:
            raise ClaimError(f"review item {review_id} is not claimed by {expert!r}: claim it first")
        if holder == expert:
            return
        raise ClaimError(
            f"review item {review_id} is claimed by {holder!r}, not {expert!r}: your claim expired and another "
            "expert took it"
        )

    def add_expert(self, name: str, token_sha256: str) -> None:
        added = self._execute(
            "INSERT INTO experts (name, token_sha256, created) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (name, token_sha256, time.time()),
        ).rowcount
        if not added:
            raise ConflictError(f"an expert named {name!r} exists already: remove it first, or choose another name")

    def experts(self) -> list[Expert]:
        return [Expert(n, c) for n, c in self._execute("SELECT name, created FROM experts ORDER BY name")]

    def remove_expert(self, name: str) -> bool:
        return self._execute("DELETE FROM experts WHERE name = ?", (name,)).rowcount > 0

    def expert_for(self, token_sha256: str) -> str | None:
        row = self._execute("SELECT name FROM experts WHERE token_sha256 = ?", (token_sha256,)).fetchone()
        return row[0] if row else None

    _REVIEW_COLUMNS = (
        "r.id, r.image_sha256, r.model_name, r.predicted_label, r.prediction, r.priority, r.reason, r.created, "
        "r.claimed_by, r.lease_until, r.feedback_id"
    )

    def _entry(self, row: tuple, image: bytes = b"") -> ReviewEntry:
        rid, sha, model, label, prediction, priority, reason, created, claimed_by, lease, feedback_id = row
        return ReviewEntry(
            image=image,
            prediction=_plain(prediction),
            model_name=model,
            predicted_label=label,
            priority=priority,
            reason=reason,
            id=rid,
            image_sha256=sha,
            created=created,
            claimed_by=claimed_by,
            lease_until=lease,
            feedback_id=feedback_id,
        )

    def add_review(self, entry: ReviewEntry) -> tuple[str, bool]:
        sha = hashlib.sha256(entry.image).hexdigest()
        open_key = f"{sha}:{entry.model_name}"
        row = (uuid.uuid4().hex, open_key, sha, entry.model_name, entry.predicted_label, entry.prediction)
        with self._transaction():
            self._execute("INSERT INTO images (sha256, data) VALUES (?, ?) ON CONFLICT DO NOTHING", (sha, entry.image))
            inserted = self._execute(
                "INSERT INTO review (id, open_key, image_sha256, model_name, predicted_label, prediction, priority, "
                "reason, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
                (*row, entry.priority, entry.reason, time.time()),
            ).fetchall()
            if inserted:
                return row[0], True
            waiting = self._execute("SELECT id FROM review WHERE open_key = ?", (open_key,)).fetchone()
            if waiting is None:  # closed between the two statements: this image may wait again
                raise StoreUnavailable("the review queue changed during the call; send it again")
            return waiting[0], False

    def _open_where(self, model_name: str, label: str) -> tuple[list[str], list]:
        where, args = ["r.feedback_id IS NULL"], []
        if model_name:
            where.append("r.model_name = ?")
            args.append(model_name)
        if label:
            where.append("r.predicted_label = ?")
            args.append(label)
        return where, args

    _NOT_SKIPPED = "NOT EXISTS (SELECT 1 FROM review_skips s WHERE s.review_id = r.id AND s.expert = ?)"

    def _offer_where(self, expert: str, model_name: str, label: str) -> tuple[list[str], list]:
        """What claim_review offers expert now: open, held by no one (or a lapsed lease), not skipped by expert."""
        where, args = self._open_where(model_name, label)
        return [*where, "(r.claimed_by IS NULL OR r.lease_until < ?)", self._NOT_SKIPPED], [*args, time.time(), expert]

    def review_items(
        self,
        model_name: str = "",
        label: str = "",
        limit: int = settings.REVIEW_LIST_DEFAULT,
        viewer: str = "",
        hide_skipped: bool = False,
    ) -> list:
        where, args = self._open_where(model_name, label)
        where.append("(r.claimed_by IS NULL OR r.lease_until < ? OR r.claimed_by = ?)")
        args += [time.time(), viewer]
        if hide_skipped:
            where.append(self._NOT_SKIPPED)
            args.append(viewer)
        rows = self._execute(
            f"SELECT {self._REVIEW_COLUMNS} FROM review r WHERE {' AND '.join(where)} "
            f"ORDER BY r.priority DESC, r.seq LIMIT {int(limit)}",
            args,
        ).fetchall()
        return [self._entry(row) for row in rows]

    def review_offered(self, expert: str, model_name: str = "", label: str = "") -> int:
        where, args = self._offer_where(expert, model_name, label)
        return self._execute(f"SELECT COUNT(*) FROM review r WHERE {' AND '.join(where)}", args).fetchone()[0]

    def review_item(self, review_id: str) -> ReviewEntry | None:
        row = self._execute(
            f"SELECT {self._REVIEW_COLUMNS}, i.data FROM review r JOIN images i ON i.sha256 = r.image_sha256 "
            "WHERE r.id = ?",
            (review_id,),
        ).fetchone()
        return None if row is None else self._entry(row[:-1], _plain(row[-1]))

    def claim_review(
        self,
        expert: str,
        review_id: str = "",
        model_name: str = "",
        label: str = "",
        lease_s: float = settings.REVIEW_LEASE_S,
    ) -> ReviewEntry | None:
        # a conditional UPDATE takes the item: of two experts racing for one, one changes the row, the other
        # changes nothing and tries the next candidate
        take = (
            "UPDATE review SET claimed_by = ?, lease_until = ? WHERE id = ? AND feedback_id IS NULL "
            "AND (claimed_by IS NULL OR lease_until < ? OR claimed_by = ?)"
        )
        for _ in range(settings.REVIEW_CLAIM_TRIES):
            now = time.time()
            if review_id:
                candidate = review_id
            else:
                where, args = self._offer_where(expert, model_name, label)
                row = self._execute(
                    f"SELECT r.id FROM review r WHERE {' AND '.join(where)} ORDER BY r.priority DESC, r.seq LIMIT 1",
                    args,
                ).fetchone()
                if row is None:
                    return None
                candidate = row[0]
            if self._execute(take, (expert, now + lease_s, candidate, now, expert)).rowcount:
                return self.review_item(candidate)
            if review_id:
                self._not_held(review_id, expert, claiming=True)
        raise ClaimError("the queue is busy: other experts took every item tried; try again")

    def release_review(self, review_id: str, expert: str, skip: bool = True) -> None:
        with self._transaction():
            released = self._execute(
                "UPDATE review SET claimed_by = NULL, lease_until = NULL WHERE id = ? AND claimed_by = ? "
                "AND feedback_id IS NULL",
                (review_id, expert),
            ).rowcount
            if not released:
                self._not_held(review_id, expert)
            if skip:
                self._execute(
                    "INSERT INTO review_skips (review_id, expert) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (review_id, expert),
                )

    def served(self, model_name: str) -> Served | None:
        row = self._execute(
            "SELECT archive, version, updated FROM served WHERE model_name = ?", (model_name,)
        ).fetchone()
        return None if row is None else Served(*row)

    def set_served(self, model_name: str, archive: str, version: str) -> None:
        self._execute(
            "INSERT INTO served (model_name, archive, version, updated) VALUES (?, ?, ?, ?) ON CONFLICT (model_name) "
            "DO UPDATE SET archive = excluded.archive, version = excluded.version, updated = excluded.updated",
            (model_name, archive, version, time.time()),
        )

    def served_models(self) -> list[str]:
        return [r[0] for r in self._execute("SELECT model_name FROM served ORDER BY model_name")]

    def close(self) -> None:
        with self._lock:
            for _, db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


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


class SQLiteStore(_SQLStore):
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
            _check_version(version, str(self.path))
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


class AnswerDeadline:
    """Ends a statement that has had no answer for seconds by shutting its connection's socket down, so that
    the driver fails at once with the connection lost. A paused or cut-off server answers nothing (its own
    statement_timeout cannot fire) and the kernel still acknowledges what is sent, so nothing else would end
    the wait. One thread watches every statement in flight."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._armed: dict[int, tuple[float, socket.socket]] = {}  # statement -> (deadline, its socket)
        self._fired: set[int] = set()
        self._lock = threading.Lock()
        self._count = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def bound(self, fd: int):
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
        stop = self._stop
        while not stop.wait(min(self.seconds / 4, 0.5)):
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


class PostgresStore(_SQLStore):
    """The store in a PostgreSQL database: postgresql://user:password@host:port/database. Connecting and
    each statement are bounded in time (settings), unless the URL sets connect_timeout or options; a
    statement with no answer at all ends after answer_deadline seconds (AnswerDeadline)."""

    _PING = "SELECT 1"

    def _is_outage(self, e: Exception) -> bool:
        # the server gone or refusing, a connection dropped, a statement timed out, out of disk or memory
        return isinstance(e, psycopg.OperationalError)

    def __init__(self, url: str, answer_deadline: float = settings.STORE_ANSWER_DEADLINE_S):
        super().__init__()
        self._deadline = AnswerDeadline(answer_deadline)
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
        if "options" not in info:
            self._connect_args["options"] = f"-c statement_timeout={settings.STORE_STATEMENT_TIMEOUT_S * 1000}"
        self._migrate()

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
            _check_version(version, self._where)
            for v in range(version, SCHEMA_VERSION):
                self._execute(POSTGRES_MIGRATIONS[v])
                self._execute("UPDATE abn_schema SET version = ?", (v + 1,))


def open_store(url: str, create: bool = True, group_linger: float = settings.STORE_GROUP_LINGER_S) -> FeedbackStore:
    """A store by URL: postgresql://user@host:port/database (or postgres://...), sqlite:///path/to/file.db, or
    a plain file path (SQLite). create=False refuses a SQLite file that is not there, rather than making an
    empty store, for commands that read. group_linger: SQLiteStore's."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if "://" in url and not url.startswith("sqlite:///"):  # only the scheme is named: the rest may hold a password
        raise ValueError(
            f"unsupported feedback store {url.split('://')[0]}://...: use sqlite:///path/to/file.db "
            "(or a file path) or postgresql://user@host:port/database"
        )
    path = Path(url.removeprefix("sqlite:///"))
    if not create and not path.exists():
        raise FileNotFoundError(f"no feedback store at {path}")
    return SQLiteStore(path, group_linger)


def display_url(url: str) -> str:
    """The URL with its password, if any, masked, for printing."""
    return re.sub(r"^(\w+://[^:/@]*):[^@/]*@", r"\1:***@", url)
