"""The two ways a handler runs the model on a batch: ONNX Runtime and PyTorch eager.

Both take normalised images (B x 3 x H x W), supplied maps (B x 1 x h x w, any
values where not supplied) and a per-sample flag, and return the perception
probabilities (B x K) and the maps that were applied (B x h x w), as numpy.

ONNX Runtime runs on a device (the archive's `device`): cpu, cuda, tensorrt (its TensorRT provider, fp16,
engines cached in the model's folder) or auto (TensorRT for an fp16 build, else CUDA, when this worker has a
GPU; the CPU otherwise and for an int8 build; the choice is logged). A GPU asked for and not there is an
error when the worker loads, never a quiet run on the CPU. On a GPU, inputs and outputs go through I/O
binding.
"""

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from finetune import checkpoint
from finetune.onnx_export import INPUTS, OUTPUTS

logger = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
DEFAULT_DEVICE = "auto"  # also what an archive without a device setting (an earlier release's) runs on
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
TRT_CACHE = "trt_engines"  # folder of TensorRT engines, in the model's folder


class DeviceError(ValueError):
    """The device asked for cannot run here."""


def tensorrt_installed() -> bool:
    """Whether TensorRT's libraries load: onnxruntime-gpu lists its TensorRT provider whether or not they do."""
    try:
        ctypes.CDLL("libnvinfer.so.10")  # the TensorRT major version onnxruntime-gpu 1.31 is built against
    except OSError:
        return False
    return True


def gpu_available() -> bool:
    # onnxruntime-gpu lists its CUDA and TensorRT providers on any machine: whether a GPU is there, torch tells
    return torch.cuda.is_available()


def check_device(device: str) -> None:
    """DeviceError unless device is known and, for cuda or tensorrt, this machine has it."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device in ("cpu", "auto"):
        return
    if PROVIDERS[device] not in ort.get_available_providers():
        raise DeviceError(
            f"device {device} needs ONNX Runtime's {PROVIDERS[device]}, which this installation lacks "
            f"(it has {', '.join(ort.get_available_providers())})"
        )
    if not gpu_available():
        raise DeviceError(f"device {device} needs a CUDA GPU and this machine has none: use --device cpu or auto")
    if device == "tensorrt" and not tensorrt_installed():
        raise DeviceError("device tensorrt needs TensorRT 10's libraries (libnvinfer.so.10): install them or use cuda")


def choose(device: str, build: str = "fp32", gpu_id: int | None = None) -> str:
    """The device a worker runs on: device itself unless auto; see the module's docstring for auto."""
    check_device(device)
    if device != "auto":
        return device
    if gpu_id is None or not gpu_available() or build == "int8":
        return "cpu"
    if build == "fp16" and PROVIDERS["tensorrt"] in ort.get_available_providers() and tensorrt_installed():
        return "tensorrt"
    return "cuda" if PROVIDERS["cuda"] in ort.get_available_providers() else "cpu"


@dataclass(frozen=True)
class GpuOptions:
    """How a backend runs on a GPU, set in the archive (chosen by measurement: bench/gpu.py, `--backend auto`).

    cudnn_search: ONNX Runtime's cuDNN convolution algorithm search (HEURISTIC, EXHAUSTIVE or DEFAULT), once per
    input shape: with fixed batch shapes warmed at start no request meets it. cudnn_max_workspace and
    prefer_nhwc are ONNX Runtime's CUDA provider options of those names. cuda_graph: one CUDA graph per batch
    size (ONNX Runtime's enable_cuda_graph with a graph id per size, or torch's CUDA graphs). half: the torch
    backend runs the model in fp16 (the ONNX backend's precision is its build's).
    """

    cudnn_search: str = "HEURISTIC"
    cudnn_max_workspace: bool = True
    prefer_nhwc: bool = False
    cuda_graph: bool = False
    half: bool = False


SEARCHES = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")


def providers(device: str, gpu_id: int, cache: Path, options: GpuOptions = GpuOptions()) -> list:
    """ONNX Runtime's providers for device, the CPU last (for the odd operator a GPU provider lacks)."""
    if options.cudnn_search not in SEARCHES:
        raise ValueError(f"cudnn_search must be one of {', '.join(SEARCHES)}, got {options.cudnn_search!r}")
    cuda = (
        "CUDAExecutionProvider",
        {
            "device_id": gpu_id,
            "cudnn_conv_algo_search": options.cudnn_search,
            "cudnn_conv_use_max_workspace": str(int(options.cudnn_max_workspace)),
            "prefer_nhwc": str(int(options.prefer_nhwc)),
            "enable_cuda_graph": str(int(options.cuda_graph)),
        },
    )
    if device == "tensorrt":
        trt = {
            "device_id": gpu_id,
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
        }
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    if device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for one of `workers` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def default_threads(backend: str, device: str, build: str, gpu_id: int | None, workers: int) -> int:
    """Intra-op threads of a worker whose archive sets none: one where ONNX Runtime runs on a GPU, which runs
    the kernels while a pool of CPU threads would only compete with the frontend and the decoding of other
    requests (bench/gpu.py, one run on an H100: 1.7-3.8x the requests/s at concurrency 8 and 64 with one thread
    than with 16); else this machine's cores shared among the workers."""
    if backend == "onnx" and choose(device, build, gpu_id) != "cpu":
        return 1
    return threads_per_worker(workers)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Stages:
    """Seconds a backend spent copying to the device, running and copying back, summed over its runs (on the
    CPU all of it is the run): the handler reports them beside its own (handlers.batching)."""

    def __init__(self) -> None:
        self.seconds = {"h2d": 0.0, "run": 0.0, "d2h": 0.0}
        self._last = 0.0

    def start(self) -> None:
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._last
        self._last = now


class OnnxBackend:
    name = "onnx"

    def __init__(
        self,
        path: str | Path,
        threads: int,
        gpu_id: int | None = None,
        device: str = DEFAULT_DEVICE,
        build: str = "fp32",
        options: GpuOptions = GpuOptions(),
    ):
        path = Path(path)
        chosen = choose(device, build, gpu_id)
        if device == "auto":
            logger.info("device auto: %s (build %s, GPU %s)", chosen, build, "none" if gpu_id is None else gpu_id)
        self.gpu = int(gpu_id or 0)
        self.options = options
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        # idle pool threads sleep rather than spin: spinning took the cores from TorchServe's frontend while it
        # formed the next batch (bench/overhead.py, concurrency 1: 51.75 -> 49.20 ms, throughput under load kept)
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), session_options, providers=providers(chosen, self.gpu, path.parent / TRT_CACHE, options)
        )
        self.device = self.session.get_providers()[0]
        if self.device != PROVIDERS[chosen]:  # ONNX Runtime falls back to the CPU when a provider fails to load
            raise DeviceError(f"ONNX Runtime could not start {PROVIDERS[chosen]} (it runs on {self.device})")
        self.on_gpu = chosen != "cpu"
        self.stages = Stages()
        self._bound: dict[int, tuple] = {}  # batch size -> (binding, inputs, outputs, run options), on a GPU

    def run(self, images: np.ndarray, maps: np.ndarray, supplied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arrays = (images.astype(np.float32, copy=False), maps.astype(np.float32, copy=False), supplied.astype(bool))
        self.stages.start()
        if self.on_gpu:
            logits, attention = self._run_bound(arrays)
        else:
            logits, attention = self.session.run([OUTPUTS[0], OUTPUTS[2]], dict(zip(INPUTS, arrays)))
            self.stages.lap("run")
        return _softmax(logits), attention[:, 0]

    def _run_bound(self, arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """One run through I/O binding: inputs copied into and outputs read from device buffers kept per batch
        size, whose fixed addresses a CUDA graph needs (one graph id per size)."""
        size = len(arrays[0])
        if size not in self._bound:
            self._bound[size] = self._bind(size, arrays)
        binding, inputs, outputs, run_options = self._bound[size]
        for value, array in zip(inputs, arrays):
            value.update_inplace(np.ascontiguousarray(array))
        self.stages.lap("h2d")
        self.session.run_with_iobinding(binding, run_options)
        self.stages.lap("run")
        found = [value.numpy() for value in outputs]
        self.stages.lap("d2h")
        return found

    def _bind(self, size: int, arrays: tuple[np.ndarray, ...]) -> tuple:
        binding = self.session.io_binding()
        inputs = [ort.OrtValue.ortvalue_from_numpy(a, "cuda", self.gpu) for a in arrays]
        for name, value in zip(INPUTS, inputs):
            binding.bind_ortvalue_input(name, value)
        classes = next(o.shape[1] for o in self.session.get_outputs() if o.name == OUTPUTS[0])
        # the map applied has the supplied maps' shape (the graph names its second dimension symbolically)
        shapes = {OUTPUTS[0]: [size, classes], OUTPUTS[2]: list(arrays[1].shape)}
        outputs = []
        for name, shape in shapes.items():
            outputs.append(ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", self.gpu))
            binding.bind_ortvalue_output(name, outputs[-1])
        run_options = ort.RunOptions()
        if self.options.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", str(size))
        return binding, inputs, outputs, run_options


class TorchBackend:
    name = "torch"

    def __init__(self, checkpoint_path: str | Path, threads: int, gpu_id: int | None = None, options=GpuOptions()):
        self.model, _ = checkpoint.load(checkpoint_path)
        self.device = torch.device(f"cuda:{gpu_id}" if gpu_id is not None and torch.cuda.is_available() else "cpu")
        self.options = options
        self.on_gpu = self.device.type == "cuda"
        self.dtype = torch.float16 if options.half and self.on_gpu else torch.float32
        self.model.to(self.device, self.dtype)
        if self.on_gpu:
            # one algorithm search per shape, at the warm-up of each fixed batch size; NHWC suits tensor cores
            torch.backends.cudnn.benchmark = True
            self.model.to(memory_format=torch.channels_last)
        else:
            torch.set_num_threads(threads)
        self.stages = Stages()
        self._graphs: dict[int, tuple] = {}  # batch size -> (graph, static inputs, static outputs, host outputs)

    @torch.inference_mode()
    def run(self, images: np.ndarray, maps: np.ndarray, supplied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.stages.start()
        if not self.on_gpu:
            out = self.model(*(torch.from_numpy(a) for a in (images, maps, supplied)))
            found = torch.softmax(out.logits, 1).numpy(), out.attention[:, 0].numpy()
            self.stages.lap("run")
            return found
        if self.options.cuda_graph:
            return self._replay(images, maps, supplied)
        inputs = self._to_device(images, maps, supplied)
        torch.cuda.synchronize(self.device)
        self.stages.lap("h2d")
        outputs = self._forward(*inputs)
        torch.cuda.synchronize(self.device)
        self.stages.lap("run")
        probabilities, attention = (o.cpu().numpy() for o in outputs)
        self.stages.lap("d2h")
        return probabilities, attention

    def _to_device(self, images: np.ndarray, maps: np.ndarray, supplied: np.ndarray) -> tuple[torch.Tensor, ...]:
        x = torch.from_numpy(images).to(self.device, non_blocking=True)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        m = torch.from_numpy(maps).to(self.device, non_blocking=True).to(self.dtype)
        return x, m, torch.from_numpy(np.asarray(supplied, bool)).to(self.device, non_blocking=True)

    def _forward(self, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x, m, s)
        return torch.softmax(out.logits.float(), 1), out.attention[:, 0].float()

    def _replay(self, images: np.ndarray, maps: np.ndarray, supplied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A run of the CUDA graph captured for this batch size (captured at its first run: the warm-up)."""
        size = len(images)
        if size not in self._graphs:
            self._graphs[size] = self._capture(images, maps, supplied)
        graph, static_in, static_out, host_out = self._graphs[size]
        for target, source in zip(static_in, self._to_device(images, maps, supplied)):
            target.copy_(source, non_blocking=True)
        torch.cuda.synchronize(self.device)
        self.stages.lap("h2d")
        graph.replay()
        torch.cuda.synchronize(self.device)
        self.stages.lap("run")
        for host, device in zip(host_out, static_out):
            host.copy_(device)
        self.stages.lap("d2h")
        probabilities, attention = (h.numpy().copy() for h in host_out)
        return probabilities, attention

    def _capture(self, images: np.ndarray, maps: np.ndarray, supplied: np.ndarray) -> tuple:
        static_in = tuple(t.clone() for t in self._to_device(images, maps, supplied))
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # cuDNN's search and the allocator's first allocations happen here
            for _ in range(3):
                self._forward(*static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(*static_in)
        host_out = tuple(torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in static_out)
        return graph, static_in, static_out, host_out


def load(
    backend: str,
    model_dir: str | Path,
    threads: int,
    gpu_id: int | None = None,
    device: str = DEFAULT_DEVICE,
    build="fp32",
    options: GpuOptions = GpuOptions(),
):
    model_dir = Path(model_dir)
    if backend == "onnx":
        return OnnxBackend(model_dir / "model.onnx", threads, gpu_id, device, build, options)
    if backend == "torch":
        return TorchBackend(model_dir / "checkpoint.pt", threads, gpu_id, options)
    raise ValueError(f"unknown backend {backend!r}; choose onnx or torch")
