"""The two ways a handler runs the model on a batch: ONNX Runtime and PyTorch eager.

Both take normalised images (B x 3 x H x W), supplied maps (B x 1 x h x w, any
values where not supplied) and a per-sample flag, and return the perception
probabilities (B x K) and the maps that were applied (B x h x w), as numpy.
"""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from finetune import checkpoint
from finetune.onnx_export import INPUTS, OUTPUTS


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for one of `workers` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: str | Path, threads: int, gpu_id: int | None = None):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers: list = ["CPUExecutionProvider"]
        if gpu_id is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(gpu_id)}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.device = self.session.get_providers()[0]

    def run(self, images: np.ndarray, maps: np.ndarray, supplied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, attention = self.session.run(
            [OUTPUTS[0], OUTPUTS[2]],
            dict(zip(INPUTS, (images.astype(np.float32), maps.astype(np.float32), supplied.astype(bool)))),
        )
        return _softmax(logits), attention[:, 0]


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


def load(backend: str, model_dir: str | Path, threads: int, gpu_id: int | None = None):
    model_dir = Path(model_dir)
    if backend == "onnx":
        return OnnxBackend(model_dir / "model.onnx", threads, gpu_id)
    if backend == "torch":
        return TorchBackend(model_dir / "checkpoint.pt", threads, gpu_id)
    raise ValueError(f"unknown backend {backend!r}; choose onnx or torch")
