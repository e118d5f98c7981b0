"""The review queue's queries: images waiting for an expert, claimed under a lease, skipped, and closed by the
correction that answers them."""

import hashlib
import time
import uuid

from serving import settings
from serving.feedback.store.core import SQLCore, plain
from serving.feedback.store.records import ClaimError, NotFoundError, ReviewEntry, StoreUnavailable


class ReviewQueries(SQLCore):
    _REVIEW_COLUMNS = (
        "r.id, r.image_sha256, r.model_name, r.predicted_label, r.prediction, r.priority, r.reason, r.created, "
        "r.claimed_by, r.lease_until, r.feedback_id"
    )

    def _entry(self, row: tuple, image: bytes = b"") -> ReviewEntry:
        rid, sha, model, label, prediction, priority, reason, created, claimed_by, lease, feedback_id = row
        return ReviewEntry(
            image=image,
            prediction=plain(prediction),
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
        return [*where, "(r.claimed_by IS NULL OR r.lease_until < ?)", self._NOT_SKIPPED], [*args, self.clock(), expert]

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
        args += [self.clock(), viewer]
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
        return None if row is None else self._entry(row[:-1], plain(row[-1]))

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
            now = self.clock()
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
