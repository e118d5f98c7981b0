"""TorchServe handler for an Attention Branch Network: predictions with attention maps.

TorchServe's BaseHandler.handle runs the stages and records HandlerTime;
each stage is @timed (a ts_handler_<stage> metric; the archive turns this on).
The whole batch runs through the model at once. A bad request is answered
with a message naming the problem (see handlers.requests for the inputs).
A batch of one bad request fails with status 400 (500 for our own fault),
which reaches gRPC callers as INVALID_ARGUMENT (INTERNAL). TorchServe 0.12
sends a gRPC answer per request of a larger batch only as OK, so a bad
request batched with others gets, instead of a Prediction, a serialized
google.rpc.Status with its own code and message, which the product's client
raises.

The archive carries the product code this handler imports (finetune/ and
handlers/, beside this file in the model's folder, which TorchServe puts
first on the worker's import path): a worker runs the code the archive was
built and checked with, whatever version of the product is installed.

The archive's model-config.yaml may hold, under `abn`: backend (onnx | torch),
threads (intra-op threads per worker; default: one where ONNX Runtime runs on a GPU, else cores / minWorkers),
max_image_bytes, device (handlers.backends.DEVICES), build (the ONNX model's
build and its parity figures, which TorchServe's customized describe answers).
"""

import json
import logging
from pathlib import Path

import grpc
import numpy as np
import torch
from google.rpc import status_pb2
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

import finetune
from finetune import checkpoint
from finetune.images import ImageError, normalize
from handlers import backends, requests, wire

logger = logging.getLogger(__name__)
INTERNAL_MESSAGE = "internal error while reading this request; the handler's log (model_log.log) has it"


class ABNHandler(BaseHandler):
    def initialize(self, context):
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        config = context.model_yaml_config or {}
        settings = config.get("abn", {})
        self.meta = checkpoint.read_metadata(model_dir / "checkpoint.pt")
        self.build = settings.get("build", {"build": "fp32"})
        backend, device = settings.get("backend", "onnx"), settings.get("device", backends.DEFAULT_DEVICE)
        workers = int(config.get("minWorkers", 1))
        threads = int(
            settings.get("threads")
            or backends.default_threads(backend, device, self.build["build"], props.get("gpu_id"), workers)
        )
        self.backend = backends.load(backend, model_dir, threads, props.get("gpu_id"), device, self.build["build"])
        if backend == "onnx":
            # stacking and normalising the batch are small: on one torch thread, whose OpenMP peers would otherwise
            # spin after each op and take the cores from ONNX Runtime's run (docs/performance.md: the inference
            # stage 50.6 -> 41.4 ms)
            torch.set_num_threads(1)
        self.max_image_bytes = int(settings.get("max_image_bytes", requests.DEFAULT_MAX_IMAGE_BYTES))
        model = context.manifest.get("model", {})
        self.model_name = model.get("modelName", self.meta["name"])
        self.model_version = str(model.get("modelVersion", self.meta["version"]))
        self.initialized = True
        logger.info(
            "ABN handler ready: %s version %s, backend %s on %s, %d threads, product code from %s",
            self.model_name,
            self.model_version,
            self.backend.name,
            self.backend.device,
            threads,
            Path(finetune.__file__).resolve().parent.parent,
        )

    def describe_handle(self) -> str:
        """TorchServe's customized describe: the build served, its parity figures, and the device."""
        return json.dumps({**self.build, "device": str(self.backend.device)})

    @timed
    def preprocess(self, data: list[dict]) -> requests.Batch:
        batch = requests.Batch([])
        for request in data:  # each on its own: nothing one request holds can fail another
            try:
                batch.requests.append(requests.parse(request, self.meta, self.max_image_bytes))
            except (ImageError, wire.WireError) as e:
                batch.requests.append(requests.Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
            except Exception:
                logger.exception("reading a request failed")
                batch.requests.append(requests.Refusal(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE))
        refusal = batch.requests[0]
        if len(data) == 1 and isinstance(refusal, requests.Refusal):  # the call fails with its own status
            raise PredictionException(refusal.message, 400 if refusal.code == grpc.StatusCode.INVALID_ARGUMENT else 500)
        if len(data) > 1:
            logger.info("batch of %d requests, %d refused", len(data), len(data) - len(batch.parsed))
        return batch

    @timed
    def inference(self, batch: requests.Batch) -> requests.Batch:
        parsed = batch.parsed
        if not parsed:  # every request of the batch refused: each is answered with its own status
            return batch
        images = normalize(torch.stack([r.image for r in parsed]), self.meta["mean"], self.meta["std"])
        with torch.inference_mode():
            batch.probabilities, batch.maps = self.backend.run(
                images.numpy(), np.stack([r.attention for r in parsed]), np.array([r.supplied for r in parsed])
            )
        return batch

    def explain_handle(self, data_preprocess: requests.Batch, raw_data: list[dict]) -> list[bytes]:
        """An ABN's explanation is its attention map, which every prediction carries: TorchServe's
        explanations endpoint answers as its predictions endpoint does."""
        return self.postprocess(self.inference(data_preprocess))

    @timed
    def postprocess(self, batch: requests.Batch) -> list[bytes]:
        answers, outputs = [], iter(zip(batch.probabilities, batch.maps))
        for i, request in enumerate(batch.requests):
            if isinstance(request, requests.Refusal):
                status = status_pb2.Status(code=request.code.value[0], message=request.message)
                answers.append(status.SerializeToString())
                continue
            probabilities, attention = next(outputs)
            pred = wire.prediction(
                probabilities,
                attention,
                self.meta["classes"],
                request.top_k,
                self.model_name,
                self.model_version,
                request.supplied,
            )
            if request.format == "json":
                answers.append(wire.to_json(pred).encode())
                self.context.set_response_content_type(i, "application/json")
            else:
                answers.append(pred.SerializeToString())
        return answers
