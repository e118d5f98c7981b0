"""The wire format: abn.v1 messages to and from arrays, validated.

Shared by the TorchServe handler, the client and the feedback service, so every
party reads and checks a map the same way.
"""

import uuid

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from handlers.stubs.abn.v1.prediction_pb2 import AttentionMap, ClassScore, Prediction

MIN_MAP_SIDE, MAX_MAP_SIDE = 2, 1024


class WireError(ValueError):
    """A message that cannot be used; the message names the field and what is wrong."""


def map_to_proto(values: np.ndarray) -> AttentionMap:
    """An h x w array in [0, 1] as an AttentionMap."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise WireError(f"attention map must be 2-D, got shape {values.shape}")
    return AttentionMap(height=values.shape[0], width=values.shape[1], values=values.ravel().tolist())


def map_from_proto(m: AttentionMap, field: str = "attention") -> np.ndarray:
    """The h x w float32 array of an AttentionMap, after checking its size and values."""
    h, w = m.height, m.width
    if not (MIN_MAP_SIDE <= h <= MAX_MAP_SIDE and MIN_MAP_SIDE <= w <= MAX_MAP_SIDE):
        raise WireError(f"{field}: height and width must be between {MIN_MAP_SIDE} and {MAX_MAP_SIDE}, got {h}x{w}")
    if len(m.values) != h * w:
        raise WireError(f"{field}: {h}x{w} map needs {h * w} values, got {len(m.values)}")
    values = np.asarray(m.values, dtype=np.float32).reshape(h, w)
    if not np.isfinite(values).all():
        raise WireError(f"{field}: values must be finite (found NaN or infinity)")
    if values.min() < 0 or values.max() > 1:
        raise WireError(f"{field}: values must lie in [0, 1], found {values.min():.4g}..{values.max():.4g}")
    return values


def mask_to_bytes(mask: np.ndarray | None) -> bytes:
    """A mask of decided pixels as abn.v1 sends it: one byte per pixel, row-major, 1 = decided; empty for None
    (every pixel decided)."""
    return b"" if mask is None else np.asarray(mask, dtype=bool).astype(np.uint8).tobytes()


def mask_from_bytes(data: bytes, shape: tuple[int, int], field: str = "decided") -> np.ndarray | None:
    """The h x w bool mask of data (nonzero = decided), None when data is empty; data must hold h * w bytes."""
    if not data:
        return None
    if len(data) != shape[0] * shape[1]:
        raise WireError(
            f"{field}: one byte per value of the {shape[0]}x{shape[1]} map ({shape[0] * shape[1]} bytes) is "
            f"needed, got {len(data)}"
        )
    return (np.frombuffer(data, np.uint8) != 0).reshape(shape)


def parse_map(data: bytes, field: str = "attention") -> np.ndarray:
    """A serialized AttentionMap, decoded and checked."""
    try:
        m = AttentionMap.FromString(bytes(data))
    except DecodeError as e:
        raise WireError(f"{field}: not a serialized abn.v1.AttentionMap ({e})") from e
    return map_from_proto(m, field)


def prediction(
    probabilities: np.ndarray,
    attention: np.ndarray,
    classes: list[str],
    top_k: int,
    model_name: str,
    model_version: str,
    supplied: bool,
) -> Prediction:
    """A Prediction from one sample's class probabilities (K) and its map (h x w)."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return Prediction(
        prediction_id=uuid.uuid4().hex,
        model_name=model_name,
        model_version=model_version,
        scores=[ClassScore(index=int(i), label=classes[i], probability=float(probabilities[i])) for i in order],
        attention=map_to_proto(attention),
        attention_supplied=supplied,
    )


def to_json(message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True)
