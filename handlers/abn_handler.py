"""TorchServe handler for an Attention Branch Network: predictions with attention maps.

Inputs per request (TorchServe's PredictionsRequest.input, or REST form fields):
  data       the encoded image (any format Pillow reads); REST bodies arrive as `body`
  attention  optional serialized abn.v1.AttentionMap (any size) used instead of the model's map
  top_k      optional number of classes to return (default 5)
  format     optional "json" for a JSON answer instead of serialized abn.v1.Prediction bytes

A whole TorchServe batch runs at once. A bad request is answered with a
message naming the problem. When no request of the batch can be used, the
batch fails with status 400, which reaches gRPC callers as INVALID_ARGUMENT.
TorchServe 0.12 sends a gRPC answer per request only as OK, so a bad request
batched with good ones gets, instead of a Prediction, a serialized
google.rpc.Status (code INVALID_ARGUMENT), which serving.client raises.

The archive's model-config.yaml may hold, under `abn`: backend (onnx | torch),
threads (intra-op threads per worker; default: cores / minWorkers),
max_image_bytes.
"""

import logging
from pathlib import Path

import grpc
import numpy as np
import torch
from google.rpc import status_pb2
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from finetune import checkpoint
from finetune.images import ImageError, image_tensor, normalize, open_image, resize_map
from handlers import backends
from serving import wire

logger = logging.getLogger(__name__)
DEFAULT_TOP_K = 5
DEFAULT_MAX_IMAGE_BYTES = 6 * 1024 * 1024


class ABNHandler(BaseHandler):
    def initialize(self, context):
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        config = context.model_yaml_config or {}
        settings = config.get("abn", {})
        self.meta = checkpoint.read_metadata(model_dir / "checkpoint.pt")
        threads = int(settings.get("threads") or backends.threads_per_worker(int(config.get("minWorkers", 1))))
        self.backend = backends.load(settings.get("backend", "onnx"), model_dir, threads, props.get("gpu_id"))
        self.max_image_bytes = int(settings.get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES))
        model = context.manifest.get("model", {})
        self.model_name = model.get("modelName", self.meta["name"])
        self.model_version = str(model.get("modelVersion", self.meta["version"]))
        self.initialized = True
        logger.info("ABN handler ready: %s version %s, backend %s on %s, %d threads", self.model_name,
                    self.model_version, self.backend.name, self.backend.device, threads)

    def _parse(self, request: dict) -> dict:
        """One request's inputs, decoded and checked; raises ImageError or WireError."""
        data = request.get("data", request.get("body"))
        if data is None:
            raise wire.WireError("data: missing; send the encoded image under the input key `data`")
        data = bytes(data)
        if len(data) > self.max_image_bytes:
            raise ImageError(f"data: image is {len(data)} bytes, above the limit of {self.max_image_bytes}")
        image = image_tensor(open_image(data, "data: image"), tuple(self.meta["input_size"]))
        h, w = self.meta["map_size"]
        attention, supplied = np.zeros((1, h, w), np.float32), False
        if request.get("attention"):
            given = torch.from_numpy(wire.parse_map(request["attention"]))
            attention, supplied = resize_map(given[None], (h, w)).numpy(), True
        top_k = _text(request.get("top_k"), str(DEFAULT_TOP_K))
        if not top_k.isdigit() or not 1 <= int(top_k) <= len(self.meta["classes"]):
            raise wire.WireError(f"top_k: must be a whole number from 1 to {len(self.meta['classes'])}, got {top_k!r}")
        fmt = _text(request.get("format"), "proto")
        if fmt not in ("proto", "json"):
            raise wire.WireError(f"format: must be proto or json, got {fmt!r}")
        return {"image": image, "attention": attention, "supplied": supplied, "top_k": int(top_k), "format": fmt}

    def preprocess(self, requests: list[dict]) -> dict:
        images = normalize(torch.stack([r["image"] for r in requests]), self.meta["mean"], self.meta["std"])
        return {"images": images.numpy(), "maps": np.stack([r["attention"] for r in requests]),
                "supplied": np.array([r["supplied"] for r in requests])}

    def inference(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        return self.backend.run(batch["images"], batch["maps"], batch["supplied"])

    def postprocess(self, outputs: tuple[np.ndarray, np.ndarray], requests: list[dict]) -> list[bytes]:
        probabilities, maps = outputs
        answers = []
        for p, m, r in zip(probabilities, maps, requests):
            pred = wire.prediction(p, m, self.meta["classes"], r["top_k"], self.model_name, self.model_version,
                                   r["supplied"])
            answers.append(wire.to_json(pred).encode() if r["format"] == "json" else pred.SerializeToString())
        return answers

    def handle(self, data: list[dict], context) -> list[bytes]:
        self.context = context
        answers: list = [None] * len(data)
        parsed, errors = {}, {}
        for i, request in enumerate(data):
            try:
                parsed[i] = self._parse(request)
            except (ImageError, wire.WireError) as e:
                errors[i] = str(e)
                answers[i] = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                               message=str(e)).SerializeToString()
        if not parsed:
            raise PredictionException("; ".join(dict.fromkeys(errors.values())), 400)
        requests = list(parsed.values())
        if len(data) > 1:
            logger.info("batch of %d requests, %d refused", len(data), len(errors))
        for i, answer in zip(parsed, self.postprocess(self.inference(self.preprocess(requests)), requests)):
            answers[i] = answer
            if parsed[i]["format"] == "json":
                context.set_response_content_type(i, "application/json")
        return answers


def _text(value, default: str) -> str:
    if value is None:
        return default
    return (bytes(value).decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)).strip()
