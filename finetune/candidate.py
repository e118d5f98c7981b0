"""A retraining candidate: the served model fine-tuned on corrections collected in service, and its scores.

The corrections arrive as plain values (Correction), so this part of the loop
knows nothing of the services that collected them. The candidate is
fine-tuned on the corrections plus a replay of the model's own training data
(the built-in set, or the image folder its checkpoint records, or one given
instead), so that it learns the corrections without forgetting the rest. It
is scored beside the served model on trusted data that feedback cannot touch
(the model's own validation split, and a gate folder when given) and on the
kept-back corrections (finetune.gate judges the figures).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from finetune import checkpoint, data, knowledge
from finetune.data import DataConfig, DataError, ImageFolder, SizedSet, TensorSet
from finetune.distributed import World
from finetune.evaluate import correct, evaluate, predict
from finetune.images import image_tensor, open_image, resize_map, resize_mask
from finetune.model import ABN
from finetune.visualize import map_rows


@dataclass(frozen=True)
class Correction:
    image: bytes  # encoded, as submitted
    attention: np.ndarray  # h x w in [0, 1], the image's aspect ratio
    label: str  # a class of the model
    decided: np.ndarray | None = None  # bool h x w: the pixels the expert decided; None: every pixel
    weight: float = 1.0  # in (0, 1]: how hard this correction pulls in fine-tuning (its author's limit)


def correction_set(corrections: list[Correction], meta: dict) -> TensorSet:
    """The corrections at the model's input size: images and maps resized as finetune.images does; each decided
    mask as maps are, keeping the pixels at least half decided (finetune.images.resize_mask)."""
    size = tuple(meta["input_size"])
    images = torch.stack([image_tensor(open_image(c.image), size) for c in corrections])
    labels = torch.tensor([meta["classes"].index(c.label) for c in corrections])
    maps = torch.stack([resize_map(torch.from_numpy(c.attention)[None], size) for c in corrections])
    decided = torch.stack(
        [
            torch.ones(1, *size) if c.decided is None else resize_mask(torch.from_numpy(c.decided)[None], size)
            for c in corrections
        ]
    )
    weights = torch.tensor([float(c.weight) for c in corrections])
    return TensorSet(images, labels, maps, decided=decided, weights=weights)


def trained_on(meta: dict) -> dict:
    """What the model's first ancestor was trained on (a fine-tuned model records its parent's)."""
    source = meta["trained_on"]
    while "parent" in source:
        source = source["parent"]
    return source


def own_data(meta: dict, folder: str | None = None) -> tuple[SizedSet, SizedSet]:
    """(train, val) of the model's own data: the built-in set it was trained on, or its image folder (folder,
    when given, replaces the one recorded), split as training split it; the folder is read (and every image
    checked) once for both. DataError, naming the option to give, when the folder is gone."""
    source = trained_on(meta)
    size = tuple(meta["input_size"])
    if source.get("data") in data.BUILTIN and folder is None:
        cfg = DataConfig(
            decoy=source.get("decoy") or "glyph",
            decoy_size=source.get("decoy_size"),
            clean=source.get("decoy") is None,
            data_seed=source.get("data_seed", 0),
        )
        splits = [data.builtin_split(cfg, split, size) for split in ("train", "val")]
        for own in splits:
            own.has_map[:] = False  # its object masks are not corrections
        return splits[0], splits[1]
    root = folder or source.get("data")
    if not root or not Path(root).is_dir():
        raise DataError(
            f"the model's training images are not at {root!r}: give the folder they are in now "
            "(abn retrain --replay-data DIR) so that retraining can replay and check them"
        )
    val_data = None if folder else source.get("val_data")
    cfg = DataConfig(
        data=root, val_data=val_data, val_fraction=source.get("val_fraction", 0.1), data_seed=source.get("data_seed", 0)
    )
    return data.folder_splits(ImageFolder(root, size, classes=meta["classes"]), cfg, size)


def repeats(corrections: int, replayed: int, share: float) -> int:
    """How many times the corrections go into an epoch so that they make up at least share of it beside
    replayed images (once at least)."""
    if corrections == 0 or replayed == 0 or share <= 0:
        return 1
    return max(1, math.ceil(share / (1 - share) * replayed / corrections))


def tune(
    parent: bytes,
    corrections: list[Correction],
    cfg: knowledge.TuneConfig,
    replay: SizedSet | None,
    world: World | None = None,
) -> tuple[ABN, list[dict]]:
    """The parent checkpoint (bytes) fine-tuned on the corrections plus replay (its own training data, every
    image of it in every epoch, as `abn finetune` does; None: the corrections alone); and the per-epoch
    losses.

    Under torchrun (world, default finetune.distributed.start(): the processes torchrun started) every rank
    calls it with the same parent, corrections, cfg and replay, and trains its share of each batch
    (knowledge.fine_tune); rank 0's model is the candidate, the others' are to be dropped. Only rank 0 need
    read the store: it shares what it read with the others before they all call tune,

        world = distributed.start()
        parent, corrections = distributed.broadcast((parent, corrections), world)  # rank 0's, everywhere
        model, history = candidate.tune(parent, corrections, cfg, own_data(meta)[0], world)
        if world.is_main: ...score, gate, promote...
        distributed.stop()

    and every rank builds replay itself (own_data reads the same files on every machine)."""
    model, meta = checkpoint.load(parent)
    edits = correction_set(corrections, meta)
    replayed = len(replay) if replay is not None else 0
    training: Dataset = ConcatDataset([edits] * repeats(len(edits), replayed, cfg.correction_share))
    if replay is not None:
        training = ConcatDataset([training, replay])
    return model, knowledge.fine_tune(model, training, meta["mean"], meta["std"], cfg, world=world)


def score(
    parent: bytes, candidate: ABN, check: list[Correction], trusted: Mapping[str, Dataset], figure: Path | None = None
) -> dict:
    """Candidate and parent on the same data: {"check_feedback": {"served", "candidate"}: finetune.evaluate's
    figures on the kept-back corrections, per correction too (per_map: what finetune.gate judges)}, and for
    each trusted set (name -> data set) {"served", "candidate": figures, "correct": {"served", "candidate":
    per-image 0/1 lists}}; their maps on check's first images drawn into figure."""
    served, meta = checkpoint.load(parent)
    check_set = correction_set(check, meta)
    pair = (("served", served), ("candidate", candidate))
    figures: dict = {
        "check_feedback": {name: evaluate(m, check_set, meta["mean"], meta["std"], per_map=True) for name, m in pair}
    }
    for set_name, dataset in trusted.items():
        figures[set_name] = {name: evaluate(m, dataset, meta["mean"], meta["std"]) for name, m in pair}
        figures[set_name]["correct"] = {
            name: correct(m, dataset, meta["mean"], meta["std"]).int().tolist() for name, m in pair
        }
    if figure is not None:
        _figure(served, candidate, check_set, meta, figure)
    return figures


def _figure(before: ABN, after: ABN, check_set: TensorSet, meta: dict, path: Path, count: int = 6) -> None:
    n = min(count, len(check_set))
    images = check_set.images[:n]
    _, maps_before = predict(before, images, meta["mean"], meta["std"])
    _, maps_after = predict(after, images, meta["mean"], meta["std"])
    rows = [
        (images[i], [None, maps_before[i], check_set.maps[i], check_set.decided[i], maps_after[i]]) for i in range(n)
    ]
    map_rows(rows, ["image", "served map", "corrected map", "decided pixels", "candidate map"], path)
