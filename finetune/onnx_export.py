"""ONNX export of an ABN, checked against PyTorch before it is used.

The graph: image (B x 3 x H x W, normalised), supplied_attention (B x 1 x h x w)
and supplied (B, bool: use the supplied map instead of the model's own) ->
logits, attention_logits, attention. The batch axis is dynamic.
"""

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from finetune.model import ABN

INPUTS = ("image", "supplied_attention", "supplied")
OUTPUTS = ("logits", "attention_logits", "attention")
TOLERANCE = 1e-4


class _Exported(nn.Module):
    def __init__(self, model: ABN):
        super().__init__()
        self.model = model

    def forward(self, image, supplied_attention, supplied):
        return tuple(self.model(image, supplied_attention, supplied))


def sample_inputs(meta: dict, batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs of the model's sizes; every other sample has a supplied map."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, *meta["input_size"], generator=g)
    maps = torch.rand(batch, 1, *meta["map_size"], generator=g)
    supplied = torch.arange(batch) % 2 == 1
    return image, maps, supplied


def own_map_inputs(images: np.ndarray, meta: dict) -> dict[str, np.ndarray]:
    """ONNX Runtime's inputs for a batch of normalised images that keep the model's own maps (none supplied)."""
    b, (h, w) = len(images), meta["map_size"]
    return dict(zip(INPUTS, (images, np.zeros((b, 1, h, w), np.float32), np.zeros(b, bool))))


def export(model: ABN, meta: dict, path: str | Path) -> None:
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = "batch"
    with warnings.catch_warnings():
        # the tracer warns about the Python-side shape check, which holds for every batch size
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Exported(model),
            sample_inputs(meta),
            str(path),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={n: {0: batch} for n in INPUTS + OUTPUTS},
            opset_version=17,
            dynamo=False,
        )


def check(model: ABN, meta: dict, path: str | Path, batch: int = 5) -> dict:
    """Largest absolute difference per output between ONNX Runtime (CPU) and PyTorch on one batch;
    raises ValueError above TOLERANCE."""
    inputs = sample_inputs(meta, batch, seed=1)
    with torch.no_grad():
        expected = model.eval()(*inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUTS), {n: t.numpy() for n, t in zip(INPUTS, inputs)})
    diffs = {n: float(np.abs(g - e.numpy()).max()) for n, g, e in zip(OUTPUTS, got, expected)}
    if max(diffs.values()) > TOLERANCE:
        raise ValueError(f"ONNX export {path} differs from PyTorch by more than {TOLERANCE}: {diffs}")
    return diffs
