import datetime

from handlers.stubs.abn.v1 import prediction_pb2 as _prediction_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_STATE_UNSPECIFIED: _ClassVar[FeedbackState]
    FEEDBACK_STATE_PENDING: _ClassVar[FeedbackState]
    FEEDBACK_STATE_CONSUMED: _ClassVar[FeedbackState]
    FEEDBACK_STATE_REJECTED: _ClassVar[FeedbackState]
    FEEDBACK_STATE_WITHDRAWN: _ClassVar[FeedbackState]
FEEDBACK_STATE_UNSPECIFIED: FeedbackState
FEEDBACK_STATE_PENDING: FeedbackState
FEEDBACK_STATE_CONSUMED: FeedbackState
FEEDBACK_STATE_REJECTED: FeedbackState
FEEDBACK_STATE_WITHDRAWN: FeedbackState

class Feedback(_message.Message):
    __slots__ = ("id", "image", "image_sha256", "attention", "label", "prediction_id", "model_name", "model_version", "author", "idempotency_key", "created_time", "state", "consumed_by", "predicted_label", "rejected_by", "decided", "confirmed", "reason", "promoted_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_BY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BY_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    image_sha256: str
    attention: _prediction_pb2.AttentionMap
    label: str
    prediction_id: str
    model_name: str
    model_version: str
    author: str
    idempotency_key: str
    created_time: _timestamp_pb2.Timestamp
    state: FeedbackState
    consumed_by: str
    predicted_label: str
    rejected_by: str
    decided: bytes
    confirmed: bool
    reason: str
    promoted_version: str
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., image_sha256: _Optional[str] = ..., attention: _Optional[_Union[_prediction_pb2.AttentionMap, _Mapping]] = ..., label: _Optional[str] = ..., prediction_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., author: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[FeedbackState, str]] = ..., consumed_by: _Optional[str] = ..., predicted_label: _Optional[str] = ..., rejected_by: _Optional[str] = ..., decided: _Optional[bytes] = ..., confirmed: _Optional[bool] = ..., reason: _Optional[str] = ..., promoted_version: _Optional[str] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("image", "attention", "label", "prediction_id", "model_name", "model_version", "author", "idempotency_key", "predicted_label", "review_id", "decided", "confirmed")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    attention: _prediction_pb2.AttentionMap
    label: str
    prediction_id: str
    model_name: str
    model_version: str
    author: str
    idempotency_key: str
    predicted_label: str
    review_id: str
    decided: bytes
    confirmed: bool
    def __init__(self, image: _Optional[bytes] = ..., attention: _Optional[_Union[_prediction_pb2.AttentionMap, _Mapping]] = ..., label: _Optional[str] = ..., prediction_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., author: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., predicted_label: _Optional[str] = ..., review_id: _Optional[str] = ..., decided: _Optional[bytes] = ..., confirmed: _Optional[bool] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("id", "created")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    created: bool
    def __init__(self, id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class GetFeedbackRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetFeedbackResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ...) -> None: ...

class ListFeedbackRequest(_message.Message):
    __slots__ = ("since", "state", "model_name", "metadata_only", "author")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_ONLY_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    state: FeedbackState
    model_name: str
    metadata_only: bool
    author: str
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[FeedbackState, str]] = ..., model_name: _Optional[str] = ..., metadata_only: _Optional[bool] = ..., author: _Optional[str] = ...) -> None: ...

class ListFeedbackResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ...) -> None: ...

class GetFeedbackStatsRequest(_message.Message):
    __slots__ = ("model_name", "author")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    author: str
    def __init__(self, model_name: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class Count(_message.Message):
    __slots__ = ("key", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: str
    count: int
    def __init__(self, key: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class GetFeedbackStatsResponse(_message.Message):
    __slots__ = ("total", "by_state", "by_label", "by_model_version", "pending_images", "conflicting_images", "by_author", "confirmations")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BY_STATE_FIELD_NUMBER: _ClassVar[int]
    BY_LABEL_FIELD_NUMBER: _ClassVar[int]
    BY_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PENDING_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CONFLICTING_IMAGES_FIELD_NUMBER: _ClassVar[int]
    BY_AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    total: int
    by_state: _containers.RepeatedCompositeFieldContainer[Count]
    by_label: _containers.RepeatedCompositeFieldContainer[Count]
    by_model_version: _containers.RepeatedCompositeFieldContainer[Count]
    pending_images: int
    conflicting_images: int
    by_author: _containers.RepeatedCompositeFieldContainer[Count]
    confirmations: int
    def __init__(self, total: _Optional[int] = ..., by_state: _Optional[_Iterable[_Union[Count, _Mapping]]] = ..., by_label: _Optional[_Iterable[_Union[Count, _Mapping]]] = ..., by_model_version: _Optional[_Iterable[_Union[Count, _Mapping]]] = ..., pending_images: _Optional[int] = ..., conflicting_images: _Optional[int] = ..., by_author: _Optional[_Iterable[_Union[Count, _Mapping]]] = ..., confirmations: _Optional[int] = ...) -> None: ...

class WithdrawFeedbackRequest(_message.Message):
    __slots__ = ("id", "author")
    ID_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    author: str
    def __init__(self, id: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class WithdrawFeedbackResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ...) -> None: ...
