"""The served record's queries: which archive and version of each model is served."""

import time

from serving.feedback.store.core import SQLCore
from serving.feedback.store.records import Served


class ServedQueries(SQLCore):
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
