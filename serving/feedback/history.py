"""abn.v1.ModelsService: the history of a model's versions, for the editor's Models page and for operators.

Reading (the runs with the gate's figures, a run's report image, the served
version, the operators' actions) is open to every expert; changing anything
(recording another version as served, requeuing or rejecting a run's
corrections) takes an operator's token or the service's (OPERATOR_METHODS,
enforced by the server's TokenAuth). Every change is audited in the store, in
the same transaction as the change, with the caller's name ("service" for the
service's token).
"""

from finetune import gate
from handlers import wire
from handlers.stubs.abn.v1 import models_pb2, models_pb2_grpc
from handlers.stubs.abn.v1.feedback_pb2 import Count
from serving import settings
from serving.feedback.service import VERSION, Identities, check_plain, check_text, timestamp
from serving.feedback.store import Action, FeedbackStore, NotFoundError, Run

MODELS_SERVICE = models_pb2.DESCRIPTOR.services_by_name["ModelsService"].full_name
# What an expert's token may call here: reading. The rest takes an operator's (or the service's) token.
READ_METHODS = frozenset(
    f"/{MODELS_SERVICE}/{m}" for m in ("ListRuns", "GetRunReport", "GetServedVersion", "ListOperatorActions")
)
OPERATOR_METHODS = frozenset(f"/{MODELS_SERVICE}/{m}" for m in ("SetServedVersion", "RequeueRun", "RejectRun"))
SERVICE_ACTOR = "service"  # who the audit names for a change made with the service's token
OUTCOMES = {
    "promoted": models_pb2.RUN_OUTCOME_PROMOTED,
    "refused": models_pb2.RUN_OUTCOME_REFUSED,
    "stopped": models_pb2.RUN_OUTCOME_STOPPED,
    "failed": models_pb2.RUN_OUTCOME_FAILED,
}


def _criterion(c: dict) -> models_pb2.GateCriterion:
    """A criterion of finetune.gate's verdict, with its change candidate - served (gate.change_of)."""
    change, low, high = gate.change_of(c)
    message = models_pb2.GateCriterion(
        name=c["name"],
        passed=c["passed"],
        detail=c["detail"],
        change=change,
        change_low=low,
        change_high=high,
        samples=c["samples"],
    )
    for side in ("served", "candidate"):
        if c.get(side) is not None:
            setattr(message, side, c[side])
    return message


def _reported(name: str, pair) -> models_pb2.ReportedFigure:
    message = models_pb2.ReportedFigure(name=name)
    for side, value in zip(("served", "candidate"), pair):
        if value is not None:
            setattr(message, side, value)
    return message


def run_message(run: Run, has_report: bool, corrections: dict[str, int]) -> models_pb2.RetrainingRun:
    gate = run.gate or {}
    return models_pb2.RetrainingRun(
        run=run.run,
        model_name=run.model_name,
        start_time=timestamp(run.started),
        end_time=timestamp(run.ended),
        outcome=OUTCOMES.get(run.outcome, models_pb2.RUN_OUTCOME_UNSPECIFIED),
        decided_by=run.decided_by,
        reason=run.reason,
        criteria=[_criterion(c) for c in gate.get("criteria", [])],
        # the reported figures are pairs (served, candidate); the count of kept-back corrections is in the run
        reported=[_reported(k, v) for k, v in gate.get("reported", {}).items() if isinstance(v, list)],
        corrections_used=run.corrections_used,
        corrections_kept_back=run.corrections_kept_back,
        served_version=run.served_version,
        version=run.version,
        has_report=has_report,
        corrections=[Count(key=k, count=v) for k, v in sorted(corrections.items())],
    )


def _limit(limit: int) -> int:
    if limit > settings.HISTORY_LIST_MAX:
        raise wire.WireError(f"limit: at most {settings.HISTORY_LIST_MAX}, got {limit}")
    return limit or settings.HISTORY_LIST_DEFAULT


def _run_id(run: str) -> str:
    check_text("run", run)
    if not run:
        raise wire.WireError("run: empty; name a run (ListRuns lists them)")
    return run


class ModelsService(models_pb2_grpc.ModelsServiceServicer):
    def __init__(self, store: FeedbackStore, identities: Identities):
        self.store, self.identities = store, identities

    def _actor(self, context) -> str:
        return self.identities.caller(context) or SERVICE_ACTOR

    def ListRuns(self, request, context):
        check_text("model_name", request.model_name)
        runs = self.store.runs(request.model_name)[::-1][: _limit(request.limit)]
        reported = self.store.reported_runs([r.run for r in runs])
        return models_pb2.ListRunsResponse(
            runs=[run_message(r, r.run in reported, self.store.run_corrections(r.run)) for r in runs]
        )

    def GetRunReport(self, request, context):
        png = self.store.run_report(_run_id(request.run))
        if png is None:
            raise NotFoundError(f"run: no report image of run {request.run[:64]!r}")
        return models_pb2.GetRunReportResponse(png=png)

    def GetServedVersion(self, request, context):
        check_text("model_name", request.model_name)
        entry = self.store.served(request.model_name)
        if entry is None:
            raise NotFoundError(f"model_name: nothing is recorded as served for {request.model_name[:64]!r}")
        return models_pb2.GetServedVersionResponse(
            archive=entry.archive, version=entry.version, update_time=timestamp(entry.updated)
        )

    def SetServedVersion(self, request, context):
        for name in ("model_name", "archive", "reason"):
            check_text(name, getattr(request, name))
        for name in ("model_name", "archive"):
            check_plain(name, getattr(request, name))
            if not getattr(request, name):
                raise wire.WireError(f"{name}: empty")
        for name in ("version", "previous_version"):
            if not VERSION.fullmatch(getattr(request, name)):
                raise wire.WireError(f"{name}: {getattr(request, name)[:40]!r} is not a version (1, 2, 1.5)")
        detail = f"version {request.previous_version} -> {request.version} ({request.archive})"
        self.store.replace_served(
            request.model_name,
            request.archive,
            request.version,
            request.previous_version,
            Action(
                self._actor(context),
                "serve",
                request.model_name,
                detail=f"{detail}: {request.reason}" if request.reason else detail,
            ),
        )
        return models_pb2.SetServedVersionResponse()

    def RequeueRun(self, request, context):
        count = self.store.requeue_run(_run_id(request.run), self._actor(context))
        return models_pb2.RequeueRunResponse(requeued=count)

    def RejectRun(self, request, context):
        count = self.store.reject_run(_run_id(request.run), self._actor(context))
        return models_pb2.RejectRunResponse(rejected=count)

    def ListOperatorActions(self, request, context):
        check_text("model_name", request.model_name)
        actions = self.store.actions(request.model_name, _limit(request.limit))
        return models_pb2.ListOperatorActionsResponse(
            actions=[
                models_pb2.OperatorAction(
                    time=timestamp(a.at),
                    actor=a.actor,
                    action=a.action,
                    model_name=a.model_name,
                    run=a.run,
                    detail=a.detail,
                )
                for a in actions
            ]
        )
