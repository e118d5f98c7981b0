"""The retraining runs' queries (with each run's report image and the corrections it took), and the counts
monitoring asks for (corrections, review items and runs)."""

import dataclasses
import json
from collections.abc import Sequence

from serving.feedback.store.core import SQLCore, plain
from serving.feedback.store.records import Run, Tally
from serving.feedback.store.schema import STATE


class RunQueries(SQLCore):
    _RUN_COLUMNS = tuple(f.name for f in dataclasses.fields(Run))  # the table's columns are named as Run's fields

    def record_run(self, run: Run, report: bytes | None = None, feedback: Sequence[str] = ()) -> None:
        values = {**dataclasses.asdict(run), "gate": None if run.gate is None else json.dumps(run.gate)}
        with self._transaction():
            self._execute(
                f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            if report is not None:
                self._execute(
                    "INSERT INTO run_reports (run, png) VALUES (?, ?) "
                    "ON CONFLICT (run) DO UPDATE SET png = excluded.png",
                    (run.run, report),
                )
            for feedback_id in feedback:
                self._execute(
                    "INSERT INTO run_feedback (run, feedback_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (run.run, feedback_id),
                )

    def run_report(self, run: str) -> bytes | None:
        row = self._execute("SELECT png FROM run_reports WHERE run = ?", (run,)).fetchone()
        return None if row is None else plain(row[0])

    def reported_runs(self, runs: list[str]) -> set[str]:
        if not runs:
            return set()
        marks = ", ".join("?" * len(runs))
        return {r[0] for r in self._execute(f"SELECT run FROM run_reports WHERE run IN ({marks})", tuple(runs))}

    def run_corrections(self, run: str) -> dict[str, int]:
        rows = self._execute(
            f"SELECT {STATE}, COUNT(*) FROM run_feedback r JOIN feedback f ON f.id = r.feedback_id WHERE r.run = ? "
            "GROUP BY 1",
            (run,),
        )
        return {state: count for state, count in rows}

    def _runs(self, clause: str, args=()) -> list[Run]:
        rows = self._execute(f"SELECT {', '.join(self._RUN_COLUMNS)} FROM runs {clause}", args).fetchall()
        runs = []
        for row in rows:
            values = dict(zip(self._RUN_COLUMNS, row))
            gate = values.pop("gate")
            runs.append(Run(**values, gate=None if gate is None else json.loads(gate)))
        return runs

    def runs(self, model_name: str = "") -> list[Run]:
        if model_name:
            return self._runs("WHERE model_name = ? ORDER BY seq", (model_name,))
        return self._runs("ORDER BY seq")

    def last_runs(self, judged: bool = False) -> list[Run]:
        latest = f"SELECT MAX(seq) FROM runs {'WHERE gate IS NOT NULL' if judged else ''} GROUP BY model_name"
        return self._runs(f"WHERE seq IN ({latest}) ORDER BY model_name")

    def tally(self) -> Tally:
        def counts(sql: str, args=()) -> dict:
            return {tuple(row[:-1]): row[-1] for row in self._execute(sql, args)}

        lease = (
            "CASE WHEN claimed_by IS NULL THEN 'waiting' WHEN lease_until < ? THEN 'lease_expired' ELSE 'claimed' END"
        )
        return Tally(
            feedback=counts(f"SELECT model_name, {STATE}, COUNT(*) FROM feedback GROUP BY 1, 2"),
            authors={a: n for (a,), n in counts("SELECT author, COUNT(*) FROM feedback GROUP BY author").items()},
            review=counts(
                f"SELECT model_name, {lease}, COUNT(*) FROM review WHERE feedback_id IS NULL GROUP BY 1, 2",
                (self.clock(),),
            ),
            runs=counts("SELECT model_name, outcome, COUNT(*) FROM runs GROUP BY 1, 2"),
        )
