"""Filling the review queue: predict every image of a folder through TorchServe and queue it with a priority,
so that the experts' time goes where the model is least sure.

Priorities, higher first:
- margin (default): 1 - (p1 - p2), the top two classes' probabilities; 1 when the model cannot choose
  between two classes, 0 when it is certain;
- entropy: the entropy of the attention map, normalised to [0, 1]; high when the model looks everywhere
  rather than at one place.
Each comes with words for the expert that say what the figures say (see CLOSE, SURE, SPREAD).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.progress import track
from handlers import wire
from handlers.stubs.abn.v1.prediction_pb2 import Prediction
from serving import settings
from serving.client import Client

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# The words a priority is shown with follow its figures: "uncertain" only when the top two classes are within
# CLOSE of each other, "probably" up to SURE, "confident" beyond; a map's entropy above SPREAD looks everywhere.
CLOSE, SURE, SPREAD = 0.2, 0.6, 0.85


def margin(p: Prediction) -> tuple[float, str]:
    top = [(s.label, s.probability) for s in p.scores[:2]] + [("", 0.0)]
    (first, p1), (second, p2) = top[0], top[1]
    gap = p1 - p2
    if gap < CLOSE:
        words = f"uncertain: {first} {p1:.0%} or {second} {p2:.0%}"
    elif gap < SURE:
        words = f"probably {first}: {p1:.0%}" + (f", then {second} {p2:.0%}" if second else "")
    else:
        words = f"confident: {first} {p1:.0%}"
    return 1.0 - gap, words


def entropy(p: Prediction) -> tuple[float, str]:
    m = wire.map_from_proto(p.attention).astype(np.float64).ravel()
    if m.sum() <= 0 or m.size < 2:
        return 1.0, "attention: the map is empty"
    q = m / m.sum()
    h = float(-(q[q > 0] * np.log(q[q > 0])).sum() / math.log(m.size))
    where = "spread over the whole image" if h >= SPREAD else "on a few places"
    return h, f"attention {where} (entropy {h:.2f})"


PRIORITIES: dict[str, Callable[[Prediction], tuple[float, str]]] = {"margin": margin, "entropy": entropy}


@dataclass
class QueueConfig:
    images: str  # a folder; its images are found recursively
    model: str = settings.MODEL_NAME
    priority: str = "margin"  # a key of PRIORITIES
    limit: int | None = None  # at most this many images, in name order


def image_files(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def add_folder(client: Client, cfg: QueueConfig) -> dict:
    """Predict and queue each image; {"queued", "waiting_already", "refused": {file: reason}}. An image the
    services refuse is reported and skipped; the others go on."""
    if cfg.priority not in PRIORITIES:
        raise ValueError(f"priority: {cfg.priority!r} is not one of {', '.join(PRIORITIES)}")
    files = image_files(cfg.images)[: cfg.limit]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {cfg.images}")
    result: dict = {"queued": 0, "waiting_already": 0, "refused": {}}
    for path in track(files, desc="queue", unit="image"):
        image = path.read_bytes()
        try:
            prediction = client.predict(image, top_k=settings.EDITOR_TOP_K, model=cfg.model)
            priority, reason = PRIORITIES[cfg.priority](prediction)
            created = client.feedback.add_review(image, prediction, priority, reason).created
        except Exception as e:  # grpc.RpcError or a refused image: say which file and why, go on
            details = getattr(e, "details", None)
            result["refused"][str(path)] = details() if callable(details) else str(e)
            continue
        result["queued" if created else "waiting_already"] += 1
    return result
