"""The Models page's JSON API: a model's retraining runs with the gate's figures and report images, the version
served, what operators did; and an operator's roll back, requeue and reject.

Like the rest of the gateway it keeps nothing: it reads and writes through the feedback service
(abn.v1.ModelsService) with the signed-in expert's token, so the service decides who may change what and records
each change with who made it. A roll back is `abn rollback`'s (serving.torchserve.served.rollback): TorchServe's
default first, then the record, written by the service. So the gateway asks the service whether the caller is an
operator before it touches TorchServe, and it needs the model store to find the earlier archive (model_store; the
Models page says so when the editor runs without it). The report images are stored with the runs, so the page
shows them wherever the gateway runs.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, Field

from handlers.stubs.abn.v1 import models_pb2
from serving import settings
from serving.client import Client
from serving.feedback.client import FeedbackClient
from serving.torchserve import served
from serving.torchserve.client import TorchServeError

OUTCOMES = {
    models_pb2.RUN_OUTCOME_PROMOTED: "promoted",
    models_pb2.RUN_OUTCOME_REFUSED: "refused",
    models_pb2.RUN_OUTCOME_STOPPED: "stopped",
    models_pb2.RUN_OUTCOME_FAILED: "failed",
}
OPERATORS_ONLY = (
    "Only an operator may do this: ask for an operator's token (abn experts add NAME --role operator) and sign in "
    "with it"
)
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
# What TorchServe's client raises: its refusals, and a key file that cannot be read. The feedback service's errors
# are other grpc.RpcErrors, answered by the gateway's handler.
TORCHSERVE_FAILED = (TorchServeError, OSError, KeyError, ValueError)


class RollbackIn(BaseModel):
    served_version: str = Field(
        max_length=settings.MAX_TEXT,
        description="the version the operator confirmed rolling back from: refused when another is served now",
    )


def _seconds(t) -> float:
    return t.ToNanoseconds() / 1e9


def _optional(message, name: str) -> float | None:
    return getattr(message, name) if message.HasField(name) else None


def run_json(r: models_pb2.RetrainingRun) -> dict:
    return {
        "run": r.run,
        "model": r.model_name,
        "started": _seconds(r.start_time),
        "ended": _seconds(r.end_time),
        "outcome": OUTCOMES.get(r.outcome, "unknown"),
        "decided_by": r.decided_by,
        "reason": r.reason,
        "corrections_used": r.corrections_used,
        "corrections_kept_back": r.corrections_kept_back,
        "served_version": r.served_version,
        "version": r.version,
        "report_url": f"/api/runs/{r.run}/report.png" if r.has_report else "",
        "corrections": {c.key: c.count for c in r.corrections},
        "criteria": [
            {
                "name": c.name,
                "passed": c.passed,
                "detail": c.detail,
                "served": _optional(c, "served"),
                "candidate": _optional(c, "candidate"),
                "change": c.change,
                "change_low": c.change_low,
                "change_high": c.change_high,
                "samples": c.samples,
            }
            for c in r.criteria
        ],
        "reported": [
            {"name": f.name, "served": _optional(f, "served"), "candidate": _optional(f, "candidate")}
            for f in r.reported
        ],
    }


def _served(service: FeedbackClient, model_name: str) -> models_pb2.GetServedVersionResponse | None:
    """What the record names as served; None when it names nothing for the model."""
    try:
        return service.served_version(model_name)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


class _ServiceRecord:
    """serving.torchserve.served.Records through the feedback service, with the operator's token: the service
    writes the record (only where it still names previous) and audits who did it."""

    def __init__(self, service: FeedbackClient, previous: str, reason: str):
        self.service, self.previous, self.reason = service, previous, reason

    def served(self, model_name: str):
        return _served(self.service, model_name)

    def set_served(self, model_name: str, archive: str, version: str) -> None:
        self.service.set_served_version(model_name, archive, version, self.previous, self.reason)


def _model_server_failed(e: Exception) -> HTTPException:
    """TorchServe's failure (or its key file's), in words."""
    if not isinstance(e, TorchServeError) or e.code() in UNREACHABLE:
        return HTTPException(503, "The editor cannot reach the model server now; try again soon")
    return HTTPException(502, f"The model server refused the roll back: {e.details()}")


def routes(client: Client, model: str, model_store: str | None, session: Callable[..., Any]) -> APIRouter:
    """The API's routes; session: the gateway's dependency that gives the signed-in expert (.token)."""
    router = APIRouter(tags=["models"])
    Signed = Annotated[Any, Depends(session)]

    def service(s) -> FeedbackClient:
        return client.feedback.with_token(s.token)

    def operator(s) -> FeedbackClient:
        """The expert's client, when they are an operator (asked before anything changes)."""
        answer = service(s)
        if not answer.identity().operator:
            raise HTTPException(403, OPERATORS_ONLY)
        return answer

    def served_now(feedback: FeedbackClient, name: str) -> dict | None:
        entry = _served(feedback, name)
        if entry is None:
            return None
        return {"version": entry.version, "archive": entry.archive, "since": _seconds(entry.update_time)}

    @router.get("/api/history")
    def history(s: Signed, model: str = model, limit: int = settings.HISTORY_LIST_DEFAULT) -> dict:
        """The model's retraining runs, newest first (each with its time, outcome, corrections used, the gate's
        figures and verdict, a report image URL and its corrections' states now), the version recorded as served,
        where a roll back would go (rollback_to; null: no earlier archive, or the editor has no model store), what
        operators did, and whether the signed-in expert is an operator."""
        feedback = service(s)
        limit = max(1, min(limit, settings.HISTORY_LIST_MAX))
        now = served_now(feedback, model)
        rollback_to = (
            served.earlier_version(model_store, model, now["version"]) if now is not None and model_store else None
        )
        return {
            "model": model,
            "operator": feedback.identity().operator,
            "served": now,
            "rollback_to": rollback_to,
            "can_roll_back": model_store is not None,
            "runs": [run_json(r) for r in feedback.runs(model, limit)],
            "actions": [
                {
                    "time": _seconds(a.time),
                    "actor": a.actor,
                    "action": a.action,
                    "model": a.model_name,
                    "run": a.run,
                    "detail": a.detail,
                }
                for a in feedback.operator_actions(model, limit)
            ],
        }

    @router.get("/api/runs/{run}/report.png", response_class=Response)
    def report(run: str, s: Signed) -> Response:
        """A run's report image: the served and candidate maps of a few kept-back corrections beside them."""
        png = service(s).run_report(run)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.post("/api/models/{name}/rollback")
    def roll_back(name: str, body: RollbackIn, s: Signed) -> dict:
        """Operators: make the version before the served one the default in TorchServe again and record it as
        served (every replica that follows the record serves it too), as `abn rollback` does; recorded with the
        operator's name. Refused (409) when another version than served_version is served now."""
        feedback = operator(s)
        if model_store is None:
            raise HTTPException(
                409, "This editor runs without the model store (abn editor --model-store): roll back with abn rollback"
            )
        try:
            now, _ = served.default_version(client.torchserve, name)
        except TORCHSERVE_FAILED as e:
            raise _model_server_failed(e) from None
        if now != body.served_version:
            raise HTTPException(
                409, f"Version {now} of {name} is served now, not {body.served_version}: reload and look again"
            )
        if served.earlier_version(model_store, name, now) is None:
            raise HTTPException(409, f"Nothing to roll back to: {model_store} holds no version of {name} before {now}")
        record = served.ServedRecord(_ServiceRecord(feedback, now, "roll back"), Path(model_store), name)
        try:
            before, after = served.rollback(client.torchserve, record)
        except TORCHSERVE_FAILED as e:
            raise _model_server_failed(e) from None
        except grpc.RpcError:  # the feedback service did not record it: TorchServe serves what the record names
            client.torchserve.set_default(name, now)
            raise
        return {"model": name, "from": before, "to": after}

    @router.post("/api/runs/{run}/requeue")
    def requeue(run: str, s: Signed) -> dict:
        """Operators: make the run's corrections that are rejected pending again (the next run may use them);
        recorded with the operator's name."""
        return {"requeued": operator(s).requeue_run(run)}

    @router.post("/api/runs/{run}/reject")
    def reject(run: str, s: Signed) -> dict:
        """Operators: set the run's corrections that are pending aside (no run uses them until requeued); recorded
        with the operator's name."""
        return {"rejected": operator(s).reject_run(run)}

    return router
