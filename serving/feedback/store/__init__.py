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

The modules, lowest first: records (the values and errors) and schema (the tables); interface (FeedbackStore);
core (connections, transactions, outages); the queries by concept (review, feedback, experts, served, runs,
operators), together in queries; the engines, sqlite and postgres. open_store chooses one by URL.
"""

import re
from pathlib import Path

from serving import settings
from serving.feedback.store.interface import FeedbackStore
from serving.feedback.store.postgres import ANSWER_MARGIN_S, KEEPALIVE, AnswerDeadline, PostgresStore
from serving.feedback.store.records import (
    STATE_ORDER,
    Action,
    ClaimError,
    ConflictError,
    Expert,
    Item,
    NotAuthorError,
    NotFoundError,
    ReviewEntry,
    Run,
    Served,
    StateError,
    StoreUnavailable,
    Tally,
    is_plain_name,
    pack_decided,
    token_hash,
    unpack_decided,
)
from serving.feedback.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS, SCHEMA_VERSION, STATES
from serving.feedback.store.sqlite import GroupCommit, SQLiteStore

__all__ = [
    "ANSWER_MARGIN_S",
    "KEEPALIVE",
    "MIGRATIONS",
    "POSTGRES_MIGRATIONS",
    "SCHEMA_VERSION",
    "STATES",
    "STATE_ORDER",
    "Action",
    "AnswerDeadline",
    "ClaimError",
    "ConflictError",
    "Expert",
    "FeedbackStore",
    "GroupCommit",
    "Item",
    "NotAuthorError",
    "NotFoundError",
    "PostgresStore",
    "ReviewEntry",
    "Run",
    "SQLiteStore",
    "Served",
    "StateError",
    "StoreUnavailable",
    "Tally",
    "display_url",
    "is_plain_name",
    "open_store",
    "pack_decided",
    "token_hash",
    "unpack_decided",
]


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
