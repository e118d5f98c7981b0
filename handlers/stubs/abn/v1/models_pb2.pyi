import datetime

from handlers.stubs.abn.v1 import feedback_pb2 as _feedback_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_OUTCOME_UNSPECIFIED: _ClassVar[RunOutcome]
    RUN_OUTCOME_PROMOTED: _ClassVar[RunOutcome]
    RUN_OUTCOME_REFUSED: _ClassVar[RunOutcome]
    RUN_OUTCOME_STOPPED: _ClassVar[RunOutcome]
    RUN_OUTCOME_FAILED: _ClassVar[RunOutcome]
RUN_OUTCOME_UNSPECIFIED: RunOutcome
RUN_OUTCOME_PROMOTED: RunOutcome
RUN_OUTCOME_REFUSED: RunOutcome
RUN_OUTCOME_STOPPED: RunOutcome
RUN_OUTCOME_FAILED: RunOutcome

class GateCriterion(_message.Message):
    __slots__ = ("name", "passed", "detail", "served", "candidate", "change", "change_low", "change_high", "samples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_LOW_FIELD_NUMBER: _ClassVar[int]
    CHANGE_HIGH_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    passed: bool
    detail: str
    served: float
    candidate: float
    change: float
    change_low: float
    change_high: float
    samples: int
    def __init__(self, name: _Optional[str] = ..., passed: _Optional[bool] = ..., detail: _Optional[str] = ..., served: _Optional[float] = ..., candidate: _Optional[float] = ..., change: _Optional[float] = ..., change_low: _Optional[float] = ..., change_high: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class ReportedFigure(_message.Message):
    __slots__ = ("name", "served", "candidate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    served: float
    candidate: float
    def __init__(self, name: _Optional[str] = ..., served: _Optional[float] = ..., candidate: _Optional[float] = ...) -> None: ...

class RetrainingRun(_message.Message):
    __slots__ = ("run", "model_name", "start_time", "end_time", "outcome", "decided_by", "reason", "criteria", "reported", "corrections_used", "corrections_kept_back", "served_version", "version", "has_report", "corrections")
    RUN_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_USED_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_KEPT_BACK_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HAS_REPORT_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    run: str
    model_name: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    outcome: RunOutcome
    decided_by: str
    reason: str
    criteria: _containers.RepeatedCompositeFieldContainer[GateCriterion]
    reported: _containers.RepeatedCompositeFieldContainer[ReportedFigure]
    corrections_used: int
    corrections_kept_back: int
    served_version: str
    version: str
    has_report: bool
    corrections: _containers.RepeatedCompositeFieldContainer[_feedback_pb2.Count]
    def __init__(self, run: _Optional[str] = ..., model_name: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[_Union[RunOutcome, str]] = ..., decided_by: _Optional[str] = ..., reason: _Optional[str] = ..., criteria: _Optional[_Iterable[_Union[GateCriterion, _Mapping]]] = ..., reported: _Optional[_Iterable[_Union[ReportedFigure, _Mapping]]] = ..., corrections_used: _Optional[int] = ..., corrections_kept_back: _Optional[int] = ..., served_version: _Optional[str] = ..., version: _Optional[str] = ..., has_report: _Optional[bool] = ..., corrections: _Optional[_Iterable[_Union[_feedback_pb2.Count, _Mapping]]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("model_name", "limit")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    limit: int
    def __init__(self, model_name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RetrainingRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[RetrainingRun, _Mapping]]] = ...) -> None: ...

class GetRunReportRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class GetRunReportResponse(_message.Message):
    __slots__ = ("png",)
    PNG_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    def __init__(self, png: _Optional[bytes] = ...) -> None: ...

class GetServedVersionRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class GetServedVersionResponse(_message.Message):
    __slots__ = ("archive", "version", "update_time")
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    archive: str
    version: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, archive: _Optional[str] = ..., version: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetServedVersionRequest(_message.Message):
    __slots__ = ("model_name", "archive", "version", "previous_version", "reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    archive: str
    version: str
    previous_version: str
    reason: str
    def __init__(self, model_name: _Optional[str] = ..., archive: _Optional[str] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetServedVersionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RequeueRunRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class RequeueRunResponse(_message.Message):
    __slots__ = ("requeued",)
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    requeued: int
    def __init__(self, requeued: _Optional[int] = ...) -> None: ...

class RejectRunRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class RejectRunResponse(_message.Message):
    __slots__ = ("rejected",)
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    rejected: int
    def __init__(self, rejected: _Optional[int] = ...) -> None: ...

class ListOperatorActionsRequest(_message.Message):
    __slots__ = ("model_name", "limit")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    limit: int
    def __init__(self, model_name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class OperatorAction(_message.Message):
    __slots__ = ("time", "actor", "action", "model_name", "run", "detail")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    actor: str
    action: str
    model_name: str
    run: str
    detail: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., model_name: _Optional[str] = ..., run: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListOperatorActionsResponse(_message.Message):
    __slots__ = ("actions",)
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[OperatorAction]
    def __init__(self, actions: _Optional[_Iterable[_Union[OperatorAction, _Mapping]]] = ...) -> None: ...
