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

class ReviewState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_STATE_UNSPECIFIED: _ClassVar[ReviewState]
    REVIEW_STATE_WAITING: _ClassVar[ReviewState]
    REVIEW_STATE_CLAIMED: _ClassVar[ReviewState]
    REVIEW_STATE_DONE: _ClassVar[ReviewState]
REVIEW_STATE_UNSPECIFIED: ReviewState
REVIEW_STATE_WAITING: ReviewState
REVIEW_STATE_CLAIMED: ReviewState
REVIEW_STATE_DONE: ReviewState

class ReviewItem(_message.Message):
    __slots__ = ("id", "image", "image_sha256", "prediction", "priority", "reason", "created_time", "state", "claimed_by", "lease_expire_time", "feedback_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_BY_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    image_sha256: str
    prediction: _prediction_pb2.Prediction
    priority: float
    reason: str
    created_time: _timestamp_pb2.Timestamp
    state: ReviewState
    claimed_by: str
    lease_expire_time: _timestamp_pb2.Timestamp
    feedback_id: str
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., image_sha256: _Optional[str] = ..., prediction: _Optional[_Union[_prediction_pb2.Prediction, _Mapping]] = ..., priority: _Optional[float] = ..., reason: _Optional[str] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[ReviewState, str]] = ..., claimed_by: _Optional[str] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feedback_id: _Optional[str] = ...) -> None: ...

class AddReviewItemRequest(_message.Message):
    __slots__ = ("image", "prediction", "priority", "reason")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    prediction: _prediction_pb2.Prediction
    priority: float
    reason: str
    def __init__(self, image: _Optional[bytes] = ..., prediction: _Optional[_Union[_prediction_pb2.Prediction, _Mapping]] = ..., priority: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class AddReviewItemResponse(_message.Message):
    __slots__ = ("id", "created")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    created: bool
    def __init__(self, id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class ListReviewItemsRequest(_message.Message):
    __slots__ = ("model_name", "label", "limit", "hide_skipped")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    HIDE_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    label: str
    limit: int
    hide_skipped: bool
    def __init__(self, model_name: _Optional[str] = ..., label: _Optional[str] = ..., limit: _Optional[int] = ..., hide_skipped: _Optional[bool] = ...) -> None: ...

class ListReviewItemsResponse(_message.Message):
    __slots__ = ("items", "offered")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    OFFERED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReviewItem]
    offered: int
    def __init__(self, items: _Optional[_Iterable[_Union[ReviewItem, _Mapping]]] = ..., offered: _Optional[int] = ...) -> None: ...

class GetReviewItemRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetReviewItemResponse(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: ReviewItem
    def __init__(self, item: _Optional[_Union[ReviewItem, _Mapping]] = ...) -> None: ...

class ClaimReviewItemRequest(_message.Message):
    __slots__ = ("id", "model_name", "label", "expert")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_name: str
    label: str
    expert: str
    def __init__(self, id: _Optional[str] = ..., model_name: _Optional[str] = ..., label: _Optional[str] = ..., expert: _Optional[str] = ...) -> None: ...

class ClaimReviewItemResponse(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: ReviewItem
    def __init__(self, item: _Optional[_Union[ReviewItem, _Mapping]] = ...) -> None: ...

class ReleaseReviewItemRequest(_message.Message):
    __slots__ = ("id", "expert", "keep_offering")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    KEEP_OFFERING_FIELD_NUMBER: _ClassVar[int]
    id: str
    expert: str
    keep_offering: bool
    def __init__(self, id: _Optional[str] = ..., expert: _Optional[str] = ..., keep_offering: _Optional[bool] = ...) -> None: ...

class ReleaseReviewItemResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCallerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCallerResponse(_message.Message):
    __slots__ = ("expert", "operator")
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    expert: str
    operator: bool
    def __init__(self, expert: _Optional[str] = ..., operator: _Optional[bool] = ...) -> None: ...
