"""How a model does on a data set: accuracy of both branches, and how its attention
agrees with the maps the data carries (corrected maps, object masks)."""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from finetune.images import normalize, resize_map
from finetune.model import ABN


@torch.no_grad()
def evaluate(model: ABN, dataset: Dataset, mean: list[float], std: list[float], batch_size: int = 256) -> dict:
    """accuracy (perception branch), attention_accuracy (attention branch), loss (their summed CE), samples;
    for the items that carry a map, map_share and map_iou (see attention_agreement) and mapped_samples."""
    was_training = model.training
    model.eval()
    correct = correct_att = n = 0
    loss = 0.0
    shares, ious = [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        y = batch["label"]
        out = model(normalize(batch["image"], mean, std))
        loss += float(
            F.cross_entropy(out.logits, y, reduction="sum") + F.cross_entropy(out.attention_logits, y, reduction="sum")
        )
        correct += int((out.logits.argmax(1) == y).sum())
        correct_att += int((out.attention_logits.argmax(1) == y).sum())
        n += len(y)
        has = batch["has_map"]
        if has.any():
            share, iou = attention_agreement(out.attention[has], batch["map"][has])
            shares.append(share)
            ious.append(iou)
    model.train(was_training)
    result = {"accuracy": correct / n, "attention_accuracy": correct_att / n, "loss": loss / n, "samples": n}
    if shares:
        result.update(
            map_share=float(torch.cat(shares).mean()),
            map_iou=float(torch.cat(ious).mean()),
            mapped_samples=sum(len(s) for s in shares),
        )
    return result


@torch.no_grad()
def correct(model: ABN, dataset: Dataset, mean: list[float], std: list[float], batch_size: int = 256) -> torch.Tensor:
    """Per item of dataset, in order: whether the perception branch predicts its label (for paired tests)."""
    was_training = model.training
    model.eval()
    hits = [
        model(normalize(b["image"], mean, std)).logits.argmax(1) == b["label"]
        for b in DataLoader(dataset, batch_size=batch_size)
    ]
    model.train(was_training)
    return torch.cat(hits)


def attention_agreement(
    attention: torch.Tensor, region: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the share of the attention's mass inside the region (map >= threshold), and the IoU of
    attention >= threshold with the region. attention N x 1 x h x w; region N x 1 x H x W (image size)."""
    inside = region >= threshold
    up = resize_map(attention, tuple(region.shape[-2:]))
    share = (up * inside).flatten(1).sum(1) / up.flatten(1).sum(1).clamp_min(1e-8)
    hot = up >= threshold
    iou = (hot & inside).flatten(1).sum(1) / (hot | inside).flatten(1).sum(1).clamp_min(1)
    return share, iou.float()


@torch.no_grad()
def predict(model: ABN, images: torch.Tensor, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and attention maps of a batch of [0, 1] images, in eval mode."""
    was_training = model.training
    model.eval()
    out = model(normalize(images, mean, std))
    model.train(was_training)
    return out.logits.argmax(1), out.attention
