from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttentionMap(_message.Message):
    __slots__ = ("height", "width", "values")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("index", "label", "probability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    probability: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("prediction_id", "model_name", "model_version", "scores", "attention", "attention_supplied")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_SUPPLIED_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    model_name: str
    model_version: str
    scores: _containers.RepeatedCompositeFieldContainer[ClassScore]
    attention: AttentionMap
    attention_supplied: bool
    def __init__(self, prediction_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., attention: _Optional[_Union[AttentionMap, _Mapping]] = ..., attention_supplied: _Optional[bool] = ...) -> None: ...
