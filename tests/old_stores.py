"""Stores as an older version of the product left them, for the tests that upgrade one in place: the first
`version` migrations, run by the database's own driver, then rows written with that version's columns."""

import sqlite3
from pathlib import Path

import psycopg

from serving.feedback.store import MIGRATIONS, POSTGRES_MIGRATIONS


def write_old_store(url: str, path: Path, version: int, rows: list[tuple[str, tuple]]) -> None:
    """rows: (an INSERT with ? placeholders, its values), written after the first `version` migrations."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(path)
        for migration in MIGRATIONS[:version]:
            db.executescript(migration)
        db.execute(f"PRAGMA user_version={version}")
        for sql, values in rows:
            db.execute(sql, values)
        db.commit()
        db.close()
        return
    with psycopg.connect(url, autocommit=True) as db:
        for migration in POSTGRES_MIGRATIONS[:version]:
            db.execute(migration)
        db.execute("CREATE TABLE abn_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO abn_schema VALUES (%s)", (version,))
        for sql, values in rows:
            db.execute(sql.replace("?", "%s"), values)
