"""The feedback store: corrected maps, durable once accepted.

One interface (FeedbackStore); the embedded default is a SQLite file in WAL
mode with synchronous=FULL, so a submission whose transaction committed
survives a crash of the process or the machine. Images are stored once, keyed
by SHA-256. The schema is versioned (PRAGMA user_version) and migrated on open.
Each item records which retraining run consumed it.
"""

import hashlib
import io
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Each entry moves the schema from version i to i + 1.
MIGRATIONS = [
    """
    CREATE TABLE images (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE feedback (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        idempotency_key TEXT UNIQUE,
        image_sha256 TEXT NOT NULL REFERENCES images(sha256),
        map_height INTEGER NOT NULL,
        map_width INTEGER NOT NULL,
        map_values BLOB NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        predicted_label TEXT NOT NULL DEFAULT '',
        prediction_id TEXT NOT NULL DEFAULT '',
        model_name TEXT NOT NULL DEFAULT '',
        model_version TEXT NOT NULL DEFAULT '',
        author TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        consumed_by TEXT
    );
    CREATE INDEX feedback_model ON feedback(model_name, consumed_by);
    CREATE INDEX feedback_created ON feedback(created);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class ConflictError(ValueError):
    """An idempotency key reused for a different submission."""


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


class FeedbackStore(ABC):
    @abstractmethod
    def submit(self, item: Item) -> tuple[str, bool]:
        """Store item durably; (id, created). A known idempotency key returns its id and False."""

    @abstractmethod
    def get(self, feedback_id: str) -> Item | None: ...

    @abstractmethod
    def items(self, since: float = 0.0, consumed: bool | None = None, model_name: str = "",
             with_data: bool = True) -> Iterator[Item]:
        """Items oldest first."""

    @abstractmethod
    def stats(self, model_name: str = "") -> dict:
        """{"total", "by_state", "by_label", "by_model_version"}."""

    @abstractmethod
    def mark_consumed(self, ids: list[str], run: str) -> int:
        """Record that run consumed these items; the number marked."""

    @abstractmethod
    def close(self) -> None: ...


class SQLiteStore(FeedbackStore):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # OK means on disk, not only in the OS's cache
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def _migrate(self) -> None:
        db = self._db()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"feedback store {self.path} has schema version {version}, newer than this "
                               f"program's {SCHEMA_VERSION}: upgrade the program")
        for v in range(version, SCHEMA_VERSION):
            try:  # one transaction per step: a failed migration leaves the previous version intact
                db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[v]}; PRAGMA user_version={v + 1}; COMMIT;")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def submit(self, item: Item) -> tuple[str, bool]:
        sha = hashlib.sha256(item.image).hexdigest()
        values = np.ascontiguousarray(item.attention, dtype="<f4")
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            if item.idempotency_key:
                row = db.execute("SELECT id, image_sha256 FROM feedback WHERE idempotency_key = ?",
                                 (item.idempotency_key,)).fetchone()
                if row:
                    db.execute("ROLLBACK")
                    if row[1] != sha:
                        raise ConflictError(f"idempotency_key {item.idempotency_key!r} was used for another "
                                            f"submission ({row[0]}) with a different image")
                    return row[0], False
            feedback_id = uuid.uuid4().hex
            db.execute("INSERT OR IGNORE INTO images (sha256, data) VALUES (?, ?)", (sha, item.image))
            db.execute(
                "INSERT INTO feedback (id, idempotency_key, image_sha256, map_height, map_width, map_values, label,"
                " predicted_label, prediction_id, model_name, model_version, author, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (feedback_id, item.idempotency_key or None, sha, values.shape[0], values.shape[1], values.tobytes(),
                 item.label, item.predicted_label, item.prediction_id, item.model_name, item.model_version,
                 item.author, time.time()))
            db.execute("COMMIT")
        except ConflictError:
            raise
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return feedback_id, True

    _COLUMNS = ("f.id, f.idempotency_key, f.image_sha256, f.map_height, f.map_width, f.label, f.predicted_label, "
                "f.prediction_id, f.model_name, f.model_version, f.author, f.created, f.consumed_by")

    def _item(self, row: tuple, data: tuple | None) -> Item:
        (fid, key, sha, h, w, label, predicted, pid, model, version, author, created, consumed) = row
        image, values = (data if data else (b"", None))
        attention = (np.frombuffer(values, dtype="<f4").reshape(h, w).copy() if values is not None
                     else np.zeros((0, 0), np.float32))
        return Item(image=image, attention=attention, label=label, predicted_label=predicted, prediction_id=pid,
                    model_name=model, model_version=version, author=author, idempotency_key=key or "", id=fid,
                    image_sha256=sha, created=created, consumed_by=consumed)

    def get(self, feedback_id: str) -> Item | None:
        row = self._db().execute(f"SELECT {self._COLUMNS}, i.data, f.map_values FROM feedback f "
                                 "JOIN images i ON i.sha256 = f.image_sha256 WHERE f.id = ?",
                                 (feedback_id,)).fetchone()
        return None if row is None else self._item(row[:-2], row[-2:])

    def items(self, since: float = 0.0, consumed: bool | None = None, model_name: str = "",
             with_data: bool = True) -> Iterator[Item]:
        where, args = ["f.created >= ?"], [since]
        if consumed is not None:
            where.append("f.consumed_by IS NOT NULL" if consumed else "f.consumed_by IS NULL")
        if model_name:
            where.append("f.model_name = ?")
            args.append(model_name)
        data = ", i.data, f.map_values" if with_data else ""
        query = (f"SELECT {self._COLUMNS}{data} FROM feedback f JOIN images i ON i.sha256 = f.image_sha256 "
                 f"WHERE {' AND '.join(where)} ORDER BY f.seq")
        n = self._COLUMNS.count(",") + 1
        for row in self._db().execute(query, args):
            yield self._item(row[:n], row[n:] if with_data else None)

    def stats(self, model_name: str = "") -> dict:
        where, args = ("WHERE model_name = ?", [model_name]) if model_name else ("", [])
        db = self._db()

        def counts(expr: str) -> dict:
            return dict(db.execute(f"SELECT {expr}, COUNT(*) FROM feedback {where} GROUP BY 1 ORDER BY 1", args))
        return {
            "total": db.execute(f"SELECT COUNT(*) FROM feedback {where}", args).fetchone()[0],
            "by_state": counts("CASE WHEN consumed_by IS NULL THEN 'pending' ELSE 'consumed' END"),
            "by_label": counts("CASE WHEN label != '' THEN label ELSE predicted_label END"),
            "by_model_version": counts("model_name || ':' || model_version"),
        }

    def mark_consumed(self, ids: list[str], run: str) -> int:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            n = sum(db.execute("UPDATE feedback SET consumed_by = ? WHERE id = ? AND consumed_by IS NULL",
                               (run, i)).rowcount for i in ids)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n

    def integrity(self) -> str:
        return self._db().execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


def open_store(url: str) -> FeedbackStore:
    """A store by URL: sqlite:///path/to/file.db, or a plain file path."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):])
    if "://" in url:
        raise ValueError(f"unsupported feedback store {url!r}: use sqlite:///path/to/file.db")
    return SQLiteStore(url)


def export_folder(store: FeedbackStore, out: str | Path, consumed: bool | None = None,
                  model_name: str = "") -> dict:
    """Write items as an image folder plus a maps folder, the format `abn train` and `abn finetune` read:
    out/images/<class>/<id>.<ext> (the bytes as submitted) and out/maps/<class>/<id>.png. The class is the
    corrected label, else the predicted one; items with neither are left out and counted."""
    out = Path(out)
    written, skipped = 0, 0
    for item in store.items(consumed=consumed, model_name=model_name):
        cls = item.label or item.predicted_label
        if not cls:
            skipped += 1
            continue
        ext = (Image.open(io.BytesIO(item.image)).format or "png").lower()
        for folder in ("images", "maps"):
            (out / folder / cls).mkdir(parents=True, exist_ok=True)
        (out / "images" / cls / f"{item.id}.{ext}").write_bytes(item.image)
        Image.fromarray((item.attention * 255).round().astype(np.uint8)).save(out / "maps" / cls / f"{item.id}.png")
        written += 1
    return {"out": str(out), "written": written, "skipped_without_class": skipped}
