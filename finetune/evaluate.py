"""How a model does on a data set: accuracy of both branches, and how its attention
agrees with the maps the data carries (corrected maps, object masks), on the
pixels each map decided."""

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from finetune.images import normalize, resize_map
from finetune.model import ABN, ABNOutput


def _forward(model: ABN, images: torch.Tensor, mean: list[float], std: list[float]) -> ABNOutput:
    """model's output on a batch of [0, 1] images, computed where the model is (a GPU while training), on the
    CPU."""
    device = next(model.parameters()).device
    return ABNOutput._make(t.cpu() for t in model(normalize(images.to(device), mean, std)))


@torch.no_grad()
def evaluate(
    model: ABN, dataset: Dataset, mean: list[float], std: list[float], batch_size: int = 256, per_map: bool = False
) -> dict:
    """accuracy (perception branch), attention_accuracy (attention branch), loss (their summed CE), samples;
    for the items that carry a map, mapped_samples and, on decided pixels, map_share and map_iou (means over the
    maps that decide some attend pixel; see attention_agreement); with per_map also, per map in order, the
    model's mean attention on its ignore and on its attend pixels (ignore_attention, attend_attention: None
    where it has none; see decided_attention)."""
    was_training = model.training
    model.eval()
    correct = correct_att = n = 0
    loss = 0.0
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in DataLoader(dataset, batch_size=batch_size):
        y = batch["label"]
        out = _forward(model, batch["image"], mean, std)
        loss += float(
            F.cross_entropy(out.logits, y, reduction="sum") + F.cross_entropy(out.attention_logits, y, reduction="sum")
        )
        correct += int((out.logits.argmax(1) == y).sum())
        correct_att += int((out.attention_logits.argmax(1) == y).sum())
        n += len(y)
        has = batch["has_map"]
        if has.any():
            for key, values in map_agreement(out.attention[has], batch["map"][has], batch["decided"][has]).items():
                parts.setdefault(key, []).append(values)
    model.train(was_training)
    result = {"accuracy": correct / n, "attention_accuracy": correct_att / n, "loss": loss / n, "samples": n}
    if parts:
        result.update(map_figures({k: torch.cat(v) for k, v in parts.items()}, per_map))
    return result


def map_agreement(attention: torch.Tensor, maps: torch.Tensor, decided: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per sample, on its decided pixels: share and iou (attention_agreement; NaN where no attend pixel is
    decided), ignore and attend (decided_attention; NaN where it has none)."""
    share, iou = attention_agreement(attention, maps, decided=decided)
    ignore, attend = decided_attention(attention, maps, decided)
    judged = ~attend.isnan()
    nan = torch.tensor(math.nan)
    return {"share": share.where(judged, nan), "iou": iou.where(judged, nan), "ignore": ignore, "attend": attend}


def map_figures(per_sample: dict[str, torch.Tensor], per_map: bool = False) -> dict:
    """evaluate's map figures from map_agreement's per-sample values."""

    def mean(values: torch.Tensor) -> float | None:
        known = values[~values.isnan()]
        return float(known.mean()) if len(known) else None

    def listed(values: torch.Tensor) -> list[float | None]:
        return [None if math.isnan(v) else v for v in values.tolist()]

    figures: dict = {
        "mapped_samples": len(per_sample["share"]),
        "map_share": mean(per_sample["share"]),
        "map_iou": mean(per_sample["iou"]),
    }
    if per_map:
        figures.update(ignore_attention=listed(per_sample["ignore"]), attend_attention=listed(per_sample["attend"]))
    return figures


@torch.no_grad()
def correct(model: ABN, dataset: Dataset, mean: list[float], std: list[float], batch_size: int = 256) -> torch.Tensor:
    """Per item of dataset, in order: whether the perception branch predicts its label (for paired tests)."""
    was_training = model.training
    model.eval()
    hits = [
        _forward(model, b["image"], mean, std).logits.argmax(1) == b["label"]
        for b in DataLoader(dataset, batch_size=batch_size)
    ]
    model.train(was_training)
    return torch.cat(hits)


def attention_agreement(
    attention: torch.Tensor, region: torch.Tensor, threshold: float = 0.5, decided: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the share of the attention's mass inside the region (map >= threshold), and the IoU of
    attention >= threshold with the region; both counted on the decided pixels only (default: all).
    attention N x 1 x h x w; region and decided N x 1 x H x W (image size)."""
    on = torch.ones_like(region, dtype=torch.bool) if decided is None else decided >= 0.5
    inside = (region >= threshold) & on
    up = resize_map(attention, tuple(region.shape[-2:])) * on
    share = (up * inside).flatten(1).sum(1) / up.flatten(1).sum(1).clamp_min(1e-8)
    hot = up >= threshold
    iou = (hot & inside).flatten(1).sum(1) / (hot | inside).flatten(1).sum(1).clamp_min(1)
    return share, iou.float()


def decided_attention(
    attention: torch.Tensor, maps: torch.Tensor, decided: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the mean attention (at image size) on its ignore pixels (decided, map < threshold) and on its
    attend pixels (decided, map >= threshold); NaN where it has none."""
    up = resize_map(attention, tuple(maps.shape[-2:]))
    on = decided >= 0.5

    def mean_on(where: torch.Tensor) -> torch.Tensor:
        count = where.flatten(1).sum(1)
        return ((up * where).flatten(1).sum(1) / count.clamp_min(1)).where(count > 0, torch.tensor(math.nan))

    return mean_on(on & (maps < threshold)), mean_on(on & (maps >= threshold))


@torch.no_grad()
def predict(model: ABN, images: torch.Tensor, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and attention maps of a batch of [0, 1] images, in eval mode."""
    was_training = model.training
    model.eval()
    out = _forward(model, images, mean, std)
    model.train(was_training)
    return out.logits.argmax(1), out.attention
