"""A retraining candidate: the served model fine-tuned on corrections collected in service, and its scores.

The corrections arrive as plain values (Correction), so this part of the loop
knows nothing of the services that collected them. The candidate is
fine-tuned on the corrections plus the model's own training data when it came
from a built-in set, and scored beside the served model on the same held-out
data: the model's validation split when known, plus kept-back corrections.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from finetune import checkpoint, data, knowledge
from finetune.data import DataConfig, TensorSet
from finetune.evaluate import evaluate, predict
from finetune.images import image_tensor, open_image, resize_map
from finetune.model import ABN
from finetune.visualize import map_rows


@dataclass(frozen=True)
class Correction:
    image: bytes  # encoded, as submitted
    attention: np.ndarray  # h x w in [0, 1], the image's aspect ratio
    label: str  # a class of the model


def correction_set(corrections: list[Correction], meta: dict) -> TensorSet:
    size = tuple(meta["input_size"])
    images = torch.stack([image_tensor(open_image(c.image), size) for c in corrections])
    labels = torch.tensor([meta["classes"].index(c.label) for c in corrections])
    maps = torch.stack([resize_map(torch.from_numpy(c.attention)[None], size) for c in corrections])
    return TensorSet(images, labels, maps)


def own_split(meta: dict, split: str) -> TensorSet | None:
    """A split ("train", "val") of the model's own data, when it was trained on a built-in set."""
    source = meta["trained_on"]
    while "parent" in source:  # a fine-tuned model: its ancestor was trained on the data
        source = source["parent"]
    if source.get("data") not in data.BUILTIN:
        return None
    cfg = DataConfig(
        decoy=source.get("decoy") or "glyph",
        decoy_size=source.get("decoy_size"),
        clean=source.get("decoy") is None,
        data_seed=source.get("data_seed", 0),
    )
    own = data.builtin_split(cfg, split, tuple(meta["input_size"]))
    own.has_map[:] = False  # its object masks are not corrections
    return own


def tune(parent: bytes, corrections: list[Correction], cfg: knowledge.TuneConfig) -> tuple[ABN, list[dict]]:
    """The parent checkpoint (bytes) fine-tuned on the corrections (plus its own training data, when known);
    and the per-epoch losses."""
    model, meta = checkpoint.load(parent)
    own_train = own_split(meta, "train")
    training: Dataset = ConcatDataset([correction_set(corrections, meta)] + ([own_train] if own_train else []))
    return model, knowledge.fine_tune(model, training, meta["mean"], meta["std"], cfg)


def score(parent: bytes, candidate: ABN, check: list[Correction], figure: Path | None = None) -> dict:
    """Candidate and parent on the same held-out data: {"served" | "candidate": {"held_out": ...,
    "check_feedback": ...}} (finetune.evaluate's figures) on check plus the model's own validation split, and
    on check alone; their maps on check's first images drawn into figure."""
    served, meta = checkpoint.load(parent)
    own_val = own_split(meta, "val")
    check_set = correction_set(check, meta)
    held_out: ConcatDataset = ConcatDataset([check_set] + ([own_val] if own_val else []))
    figures = {
        name: {
            "held_out": evaluate(m, held_out, meta["mean"], meta["std"]),
            "check_feedback": evaluate(m, check_set, meta["mean"], meta["std"]),
        }
        for name, m in (("served", served), ("candidate", candidate))
    }
    if figure is not None:
        _figure(served, candidate, check_set, meta, figure)
    return figures


def _figure(before: ABN, after: ABN, check_set: TensorSet, meta: dict, path: Path, count: int = 6) -> None:
    n = min(count, len(check_set))
    images = check_set.images[:n]
    _, maps_before = predict(before, images, meta["mean"], meta["std"])
    _, maps_after = predict(after, images, meta["mean"], meta["std"])
    rows = [(images[i], [None, maps_before[i], check_set.maps[i], maps_after[i]]) for i in range(n)]
    map_rows(rows, ["image", "served map", "corrected map", "candidate map"], path)
