"""One prediction request as the handler reads it, and a batch of them between the handler's stages.

Inputs per request (TorchServe's PredictionsRequest.input, or REST form fields):
  data       the encoded image (any format Pillow reads); REST bodies arrive as `body`
  attention  optional serialized abn.v1.AttentionMap (any size) used instead of the model's map
  top_k      optional number of classes to return (default 5)
  format     optional "json" for a JSON answer instead of serialized abn.v1.Prediction bytes
"""

from dataclasses import dataclass, field

import grpc
import numpy as np
import torch

from finetune.images import ImageError, image_tensor, open_image, resize_map
from handlers import wire

DEFAULT_TOP_K = 5
DEFAULT_MAX_IMAGE_BYTES = 6 * 1024 * 1024
FORMATS = ("proto", "json")


@dataclass
class Request:
    image: torch.Tensor  # 3 x H x W in [0, 1] at the model's input size
    attention: np.ndarray  # 1 x h x w at the model's map size; zeros unless supplied
    supplied: bool
    top_k: int
    format: str


@dataclass
class Refusal:
    """A request answered with a status instead of a prediction."""

    code: grpc.StatusCode
    message: str


@dataclass
class Batch:
    """What one stage hands the next: every request of TorchServe's batch, in order, each parsed or refused;
    the model's inputs (images, maps, flags), row i for request i and padding rows after them; and the model's
    outputs, row for row."""

    requests: list[Request | Refusal]
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray]
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    maps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))

    @property
    def parsed(self) -> list[Request]:
        return [r for r in self.requests if isinstance(r, Request)]


def _text(value, default: str) -> str:
    if value is None:
        return default
    return (bytes(value).decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)).strip()


def parse(request: dict, meta: dict, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Request:
    """One request's inputs, decoded and checked against the model's metadata; raises ImageError or
    wire.WireError naming the input."""
    data = request.get("data", request.get("body"))
    if data is None:
        raise wire.WireError("data: missing; send the encoded image under the input key `data`")
    data = bytes(data)
    if len(data) > max_image_bytes:
        raise ImageError(f"data: image is {len(data)} bytes, above the limit of {max_image_bytes}")
    image = image_tensor(open_image(data, "data: image"), tuple(meta["input_size"]))
    h, w = meta["map_size"]
    attention, supplied = np.zeros((1, h, w), np.float32), False
    if request.get("attention"):
        given = torch.from_numpy(wire.parse_map(request["attention"]))
        attention, supplied = resize_map(given[None], (h, w)).numpy(), True
    # not given: the default, or every class of a model that has fewer (a two-class model answers both)
    top_k = _text(request.get("top_k"), str(min(DEFAULT_TOP_K, len(meta["classes"]))))
    # ASCII digits only (str.isdigit is true for "²"), and few of them (int() of thousands of digits is slow)
    if not (top_k.isascii() and top_k.isdigit() and len(top_k) <= 6 and 1 <= int(top_k) <= len(meta["classes"])):
        raise wire.WireError(f"top_k: must be a whole number from 1 to {len(meta['classes'])}, got {top_k[:20]!r}")
    fmt = _text(request.get("format"), FORMATS[0])
    if fmt not in FORMATS:
        raise wire.WireError(f"format: must be proto or json, got {fmt[:20]!r}")
    return Request(image, attention, supplied, int(top_k), fmt)
