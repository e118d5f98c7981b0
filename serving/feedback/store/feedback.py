"""The corrections' queries: submit (idempotent, once per key), read, count, and move between states
(consumed by a run, rejected, withdrawn by its author, requeued)."""

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Iterator

import numpy as np

from serving.feedback.store.core import plain
from serving.feedback.store.records import (
    ConflictError,
    Item,
    NotAuthorError,
    NotFoundError,
    StateError,
    pack_decided,
    unpack_decided,
)
from serving.feedback.store.review import ReviewQueries
from serving.feedback.store.schema import PENDING, STATE, STATES

WITHDRAWN_REASON = "withdrawn by its author"
# How a conflict names the columns of _PAYLOAD: by the request's fields.
_FIELD_NAMES = {"image_sha256": "image", "map_height": "attention", "map_width": "attention", "map_values": "attention"}


class FeedbackQueries(ReviewQueries):
    """A correction that answers a review item closes it, in the same transaction: these build on the review
    queue's queries."""

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
        differ = [name for name, old, new in zip(self._PAYLOAD, stored[1:], payload) if plain(old) != new]
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
            where.append(STATES["consumed"] if consumed else PENDING)
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
            "by_state": counts(STATE),
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
        where = " AND ".join([PENDING, *conditions])
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
        sql = f"UPDATE feedback SET rejected_by = ?, reason = ? WHERE {PENDING} AND id = ?"
        return self._update_each(sql, (by, reason), ids)

    def set_reason(self, ids: list[str], reason: str) -> int:
        return self._update_each(f"UPDATE feedback SET reason = ? WHERE {PENDING} AND id = ?", (reason,), ids)

    def requeue(self, ids: list[str]) -> int:
        sql = "UPDATE feedback SET rejected_by = NULL, reason = '' WHERE rejected_by IS NOT NULL AND id = ?"
        return self._update_each(sql, (), ids)

    def withdraw(self, feedback_id: str, author: str, at: float | None = None) -> Item:
        with self._transaction():
            withdrawn = self._execute(
                f"UPDATE feedback SET withdrawn = ?, reason = ? WHERE id = ? AND author = ? AND {PENDING}",
                (time.time() if at is None else at, WITHDRAWN_REASON, feedback_id, author),
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
        where = ["rejected_by IS NOT NULL" if rejected else PENDING]
        args = []
        for column, value in (("author", author), ("rejected_by", rejected_by)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._execute(f"SELECT id FROM feedback WHERE {' AND '.join(where)} ORDER BY seq", args)
        return [r[0] for r in rows]
