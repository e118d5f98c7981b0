"""Whether a build of a model serves as the model does: its ONNX Runtime outputs against the fp32 PyTorch model
on validation images.

Two figures: top-1 agreement (the share of images both give the same class) and the mean absolute difference
of the attention maps (over every image and map cell; maps lie in [0, 1]). A build that misses either
threshold raises ParityError with both figures and both thresholds, before anything is written.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from finetune.images import normalize
from finetune.model import ABN
from finetune.onnx_export import OUTPUTS, own_map_inputs


@dataclass(frozen=True)
class ParityConfig:
    """The bar a build must clear against the fp32 PyTorch model."""

    min_agreement: float = 0.99  # share of validation images with the same top-1 class
    max_attention_mad: float = 0.02  # mean |attention map difference|
    check_images: int | None = 1000  # validation images checked (the first ones); None: all
    check_batch: int = 32  # images per run


class ParityError(ValueError):
    """A build misses the bar; figures holds what it reached."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def figures(
    model: ABN, meta: dict, onnx_path: str | Path, dataset: Dataset, cfg: ParityConfig = ParityConfig()
) -> dict:
    """{"agreement", "attention_mad", "checked_on"} of the ONNX model at onnx_path (run by ONNX Runtime on the
    CPU: an fp16 build's arithmetic is checked there too) against model, on dataset's first cfg.check_images."""
    n = len(dataset) if cfg.check_images is None else min(cfg.check_images, len(dataset))  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("no validation images to check the build on")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model.eval()
    same, abs_diff, cells = 0, 0.0, 0
    for batch in DataLoader(Subset(dataset, range(n)), batch_size=cfg.check_batch):
        x = normalize(batch["image"], meta["mean"], meta["std"])
        with torch.no_grad():
            expected = model(x)
        logits, attention = session.run([OUTPUTS[0], OUTPUTS[2]], own_map_inputs(x.numpy(), meta))
        same += int((logits.argmax(1) == expected.logits.argmax(1).numpy()).sum())
        abs_diff += float(np.abs(attention.astype(np.float64) - expected.attention.numpy()).sum())
        cells += attention.size
    return {"agreement": same / n, "attention_mad": abs_diff / cells, "checked_on": n}


def check(
    model: ABN, meta: dict, onnx_path: str | Path, dataset: Dataset, cfg: ParityConfig = ParityConfig(), what=""
) -> dict:
    """figures(...), or ParityError when they miss cfg's thresholds."""
    found = figures(model, meta, onnx_path, dataset, cfg)
    if found["agreement"] < cfg.min_agreement or found["attention_mad"] > cfg.max_attention_mad:
        raise ParityError(
            f"{what or Path(onnx_path).name} misses the fp32 model on {found['checked_on']} validation images: "
            f"top-1 agreement {found['agreement']:.4f} (needs >= {cfg.min_agreement}), "
            f"attention map mean |difference| {found['attention_mad']:.4f} (needs <= {cfg.max_attention_mad})",
            found,
        )
    return found
