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

Each batch is padded to one of a few fixed sizes, each run once when the worker starts, and its requests are
decoded on a pool of threads (handlers.batching).

The archive's model-config.yaml may hold, under `abn`: backend (onnx | torch),
threads (intra-op threads per worker; default: one where ONNX Runtime runs on a GPU, else cores / minWorkers),
max_image_bytes, device (handlers.backends.DEVICES), build (the ONNX model's
build and its parity figures, which TorchServe's customized describe answers), batch_sizes (the fixed sizes;
empty: none), decode_threads (default: cores / minWorkers), gpu (handlers.backends.GpuOptions) and choice
(what `--backend auto` measured when the archive was built).
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

import grpc
import torch
from google.rpc import status_pb2
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

import finetune
from finetune import checkpoint
from finetune.images import ImageError
from handlers import backends, batching, requests, wire

logger = logging.getLogger(__name__)
INTERNAL_MESSAGE = "internal error while reading this request; the handler's log (model_log.log) has it"
# runs of each fixed size at the worker's start: the first searches (cuDNN) or captures (torch's CUDA graph),
# ONNX Runtime captures its CUDA graph after a few runs; the rest are cheap
WARM_RUNS = 3


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
        options = backends.GpuOptions(**settings.get("gpu", {}))
        self.backend = backends.load(
            backend, model_dir, threads, props.get("gpu_id"), device, self.build["build"], options
        )
        if backend == "onnx" or self.backend.on_gpu:
            # the little torch does here on the CPU (maps, copies) runs on one thread, whose OpenMP peers would
            # otherwise spin after each op and take the cores from ONNX Runtime's run (docs/performance.md: the
            # inference stage 50.6 -> 41.4 ms) and, on a GPU, from the decoding threads
            torch.set_num_threads(1)
        self.max_image_bytes = int(settings.get("max_image_bytes", requests.DEFAULT_MAX_IMAGE_BYTES))
        batch_size = int(config.get("batchSize", 1))
        self.sizes = batching.sizes_for(batch_size, settings.get("batch_sizes", batching.DEFAULT_SIZES))
        self.normalizer = batching.Normalizer(self.meta["mean"], self.meta["std"])
        self.decoder = batching.Decoder(int(settings.get("decode_threads") or batching.default_decode_threads(workers)))
        self.rows = batching.Rows(
            max((batch_size, *self.sizes)), self.meta["input_size"], self.meta["map_size"], self.backend.on_gpu
        )
        self.warmed = self._warm_up()
        self.timings = batching.Timings()
        model = context.manifest.get("model", {})
        self.model_name = model.get("modelName", self.meta["name"])
        self.model_version = str(model.get("modelVersion", self.meta["version"]))
        self.initialized = True
        logger.info(
            "ABN handler ready: %s version %s, backend %s on %s (%s), %d threads, %d decoding threads, "
            "batch sizes %s warmed in %s s, product code from %s",
            self.model_name,
            self.model_version,
            self.backend.name,
            self.backend.device,
            options,
            threads,
            self.decoder.threads,
            list(self.sizes) or "(any, unpadded)",
            {k: round(v, 3) for k, v in self.warmed.items()},
            Path(finetune.__file__).resolve().parent.parent,
        )

    def _warm_up(self) -> dict[int, float]:
        """Runs every fixed batch size WARM_RUNS times, so that no request waits for a search or a capture; the
        seconds each size took. The backend's stage times start after it."""
        warmed = {}
        for size in self.sizes:
            start = time.perf_counter()
            for _ in range(WARM_RUNS):
                self.backend.run(*self.rows.take(size))
            warmed[size] = time.perf_counter() - start
        self.backend.stages = backends.Stages()
        return warmed

    def describe_handle(self) -> str:
        """TorchServe's customized describe: the build served, its parity figures and the device; under
        `serving`, what the worker runs with and what its batches cost so far (per stage, summed)."""
        serving = {
            "backend": self.backend.name,
            "gpu": dataclasses.asdict(self.backend.options),
            "batch_sizes": list(self.sizes),
            "warmed_seconds": {str(k): v for k, v in self.warmed.items()},
            "decode_threads": self.decoder.threads,
            **self.timings.record(self.backend.stages.seconds),
        }
        return json.dumps({**self.build, "device": str(self.backend.device), "serving": serving})

    @timed
    def preprocess(self, data: list[dict]) -> requests.Batch:
        start = time.perf_counter()
        n = len(data)
        size = batching.padded(n, self.sizes)
        images, maps, supplied = self.rows.take(size)

        def read(i: int) -> requests.Request | requests.Refusal:
            # each on its own: nothing one request holds can fail another
            try:
                request = requests.parse(data[i], self.meta, self.max_image_bytes)
            except (ImageError, wire.WireError) as e:
                return requests.Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except Exception:
                logger.exception("reading a request failed")
                return requests.Refusal(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
            self.normalizer.into(images[i], request.image.numpy())
            maps[i], supplied[i] = request.attention, request.supplied
            return request

        batch = requests.Batch(self.decoder.map(read, n), (images, maps, supplied))
        refusal = batch.requests[0]
        if n == 1 and isinstance(refusal, requests.Refusal):  # the call fails with its own status
            raise PredictionException(refusal.message, 400 if refusal.code == grpc.StatusCode.INVALID_ARGUMENT else 500)
        if n > 1:
            logger.info("batch of %d requests, %d refused, run as %d", n, n - len(batch.parsed), size)
        self.timings.add("decode", time.perf_counter() - start)
        return batch

    @timed
    def inference(self, batch: requests.Batch) -> requests.Batch:
        if not batch.parsed:  # every request of the batch refused: each is answered with its own status
            return batch
        with torch.inference_mode():
            batch.probabilities, batch.maps = self.backend.run(*batch.inputs)
        self.timings.batch(len(batch.requests), len(batch.inputs[0]))
        return batch

    def explain_handle(self, data_preprocess: requests.Batch, raw_data: list[dict]) -> list[bytes]:
        """An ABN's explanation is its attention map, which every prediction carries: TorchServe's
        explanations endpoint answers as its predictions endpoint does."""
        return self.postprocess(self.inference(data_preprocess))

    @timed
    def postprocess(self, batch: requests.Batch) -> list[bytes]:
        answers = []
        for i, request in enumerate(batch.requests):  # row i holds request i; the rows after them, padding
            if isinstance(request, requests.Refusal):
                status = status_pb2.Status(code=request.code.value[0], message=request.message)
                answers.append(status.SerializeToString())
                continue
            probabilities, attention = batch.probabilities[i], batch.maps[i]
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
