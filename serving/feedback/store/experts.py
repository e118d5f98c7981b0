"""The experts' queries: a name, the hash of a token, and a role (settings.ROLES)."""

import time

from serving import settings
from serving.feedback.store.core import SQLCore
from serving.feedback.store.records import ConflictError, Expert


class ExpertQueries(SQLCore):
    def add_expert(self, name: str, token_sha256: str, role: str = "expert") -> None:
        if role not in settings.ROLES:
            raise ValueError(f"role: {role!r} is not one of {', '.join(settings.ROLES)}")
        added = self._execute(
            "INSERT INTO experts (name, token_sha256, created, role) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (name, token_sha256, time.time(), role),
        ).rowcount
        if not added:
            raise ConflictError(f"an expert named {name!r} exists already: remove it first, or choose another name")

    def experts(self) -> list[Expert]:
        return [Expert(*row) for row in self._execute("SELECT name, created, role FROM experts ORDER BY name")]

    def remove_expert(self, name: str) -> bool:
        return self._execute("DELETE FROM experts WHERE name = ?", (name,)).rowcount > 0

    def expert_for(self, token_sha256: str) -> str | None:
        expert = self.expert_by_token(token_sha256)
        return expert.name if expert else None

    def expert_by_token(self, token_sha256: str) -> Expert | None:
        row = self._execute(
            "SELECT name, created, role FROM experts WHERE token_sha256 = ?", (token_sha256,)
        ).fetchone()
        return Expert(*row) if row else None
