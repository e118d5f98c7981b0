"""What operators do from the Models page, each audited in the transaction that does it: record another version
as served (a roll back), requeue or reject a run's corrections; and the audit, read back."""

import time

from serving.feedback.store.core import SQLCore
from serving.feedback.store.records import Action, NotFoundError, StateError
from serving.feedback.store.schema import STATES


class OperatorQueries(SQLCore):
    _ACTION_COLUMNS = "actor, action, model_name, run, detail, at"

    def _audit(self, action: Action) -> None:
        self._execute(
            f"INSERT INTO audit ({self._ACTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (action.actor, action.action, action.model_name, action.run, action.detail, action.at or time.time()),
        )

    def actions(self, model_name: str = "", limit: int = 100) -> list[Action]:
        where, args = ("WHERE model_name = ?", [model_name]) if model_name else ("", [])
        rows = self._execute(
            f"SELECT {self._ACTION_COLUMNS} FROM audit {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
        )
        return [Action(*row) for row in rows]

    def replace_served(self, model_name: str, archive: str, version: str, previous: str, action: Action) -> None:
        with self._transaction():
            entry = self.served(model_name)
            if entry is not None and entry.version != previous:
                raise StateError(
                    f"the record names version {entry.version} of {model_name} as served, not {previous}: it changed "
                    "meanwhile; look again"
                )
            self.set_served(model_name, archive, version)
            self._audit(action)

    def _run_model(self, run: str) -> str:
        row = self._execute("SELECT model_name FROM runs WHERE run = ? ORDER BY seq DESC", (run,)).fetchone()
        if row is None:
            raise NotFoundError(f"run: no retraining run {run[:64]!r} is recorded")
        return row[0]

    def _run_ids(self, run: str, state: str) -> list[str]:
        rows = self._execute(
            f"SELECT f.id FROM run_feedback r JOIN feedback f ON f.id = r.feedback_id WHERE r.run = ? "
            f"AND {STATES[state]} ORDER BY f.seq",
            (run,),
        )
        return [r[0] for r in rows]

    def requeue_run(self, run: str, actor: str) -> int:
        with self._transaction():
            model = self._run_model(run)
            count = self.requeue(self._run_ids(run, "rejected"))
            if not count:
                raise StateError(f"run {run} has no rejected corrections to requeue")
            self._audit(Action(actor, "requeue", model, run, f"{count} corrections of run {run} pending again"))
        return count

    def reject_run(self, run: str, actor: str) -> int:
        with self._transaction():
            model = self._run_model(run)
            reason = f"rejected by operator {actor} from the history of run {run}"
            count = self.mark_rejected(self._run_ids(run, "pending"), f"operator {actor}", reason)
            if not count:
                raise StateError(f"run {run} has no pending corrections to reject")
            self._audit(Action(actor, "reject", model, run, f"{count} corrections of run {run} set aside"))
        return count
