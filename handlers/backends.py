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


def providers(device: str, gpu_id: int, cache: Path) -> list:
    """ONNX Runtime's providers for device, the CPU last (for the odd operator a GPU provider lacks)."""
    cuda = ("CUDAExecutionProvider", {"device_id": gpu_id})
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


class OnnxBackend:
    name = "onnx"

    def __init__(
        self,
        path: str | Path,
        threads: int,
        gpu_id: int | None = None,
        device: str = DEFAULT_DEVICE,
        build: str = "fp32",
    ):
        path = Path(path)
        chosen = choose(device, build, gpu_id)
        if device == "auto":
            logger.info("device auto: %s (build %s, GPU %s)", chosen, build, "none" if gpu_id is None else gpu_id)
        self.gpu = int(gpu_id or 0)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle pool threads sleep rather than spin: spinning took the cores from TorchServe's frontend while it
        # formed the next batch (bench/overhead.py, concurrency 1: 51.75 -> 49.20 ms, throughput under load kept)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), options, providers=providers(chosen, self.gpu, path.parent / TRT_CACHE)
        )
        self.device = self.session.get_providers()[0]
        if self.device != PROVIDERS[chosen]:  # ONNX Runtime falls back to the CPU when a provider fails to load
            raise DeviceError(f"ONNX Runtime could not start {PROVIDERS[chosen]} (it runs on {self.device})")
        self.on_gpu = chosen != "cpu"

    def run(self, images: np.ndarray, maps: np.ndarray, supplied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arrays = (images.astype(np.float32, copy=False), maps.astype(np.float32, copy=False), supplied.astype(bool))
        feeds = dict(zip(INPUTS, arrays))
        if self.on_gpu:
            logits, attention = self._run_bound(feeds)
        else:
            logits, attention = self.session.run([OUTPUTS[0], OUTPUTS[2]], feeds)
        return _softmax(logits), attention[:, 0]

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One run with inputs copied to and outputs left on the GPU until the end (not run on a GPU here)."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.gpu))
        for name in (OUTPUTS[0], OUTPUTS[2]):
            binding.bind_output(name, "cuda", self.gpu)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


class TorchBackend:
    name = "torch"

    def __init__(self, checkpoint_path: str | Path, threads: int, gpu_id: int | None = None):
        self.model, _ = checkpoint.load(checkpoint_path)
        self.device = torch.device(f"cuda:{gpu_id}" if gpu_id is not None and torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def run(self, images: np.ndarray, maps: np.ndarray, supplied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.model(*(torch.from_numpy(a).to(self.device) for a in (images, maps, supplied)))
        return torch.softmax(out.logits, 1).cpu().numpy(), out.attention[:, 0].cpu().numpy()


def load(
    backend: str,
    model_dir: str | Path,
    threads: int,
    gpu_id: int | None = None,
    device: str = DEFAULT_DEVICE,
    build="fp32",
):
    model_dir = Path(model_dir)
    if backend == "onnx":
        return OnnxBackend(model_dir / "model.onnx", threads, gpu_id, device, build)
    if backend == "torch":
        return TorchBackend(model_dir / "checkpoint.pt", threads, gpu_id)
    raise ValueError(f"unknown backend {backend!r}; choose onnx or torch")
