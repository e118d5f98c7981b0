"""Accuracy of both branches of a model on a data set."""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from finetune.images import normalize
from finetune.model import ABN


@torch.no_grad()
def evaluate(model: ABN, dataset: Dataset, mean: list[float], std: list[float], batch_size: int = 256) -> dict:
    """accuracy (perception branch), attention_accuracy (attention branch), loss (their summed CE), samples."""
    was_training = model.training
    model.eval()
    correct = correct_att = loss = n = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        y = batch["label"]
        out = model(normalize(batch["image"], mean, std))
        loss += float(F.cross_entropy(out.logits, y, reduction="sum") +
                      F.cross_entropy(out.attention_logits, y, reduction="sum"))
        correct += int((out.logits.argmax(1) == y).sum())
        correct_att += int((out.attention_logits.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return {"accuracy": correct / n, "attention_accuracy": correct_att / n, "loss": loss / n, "samples": n}


@torch.no_grad()
def predict(model: ABN, images: torch.Tensor, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and attention maps of a batch of [0, 1] images, in eval mode."""
    was_training = model.training
    model.eval()
    out = model(normalize(images, mean, std))
    model.train(was_training)
    return out.logits.argmax(1), out.attention
