"""Embedding human knowledge: fine-tuning with corrected attention maps.

The method of Mitsuhara et al., "Embedding Human Knowledge into Deep Neural
Network via Attention Map" (2019):

    L = L_att + L_per + gamma * L_map,   L_map = ||M' - M||_2 per edited sample,

M' the corrected map resized to the model's map, averaged over the edited
samples of a batch; samples without an edit contribute L_att + L_per only. The
feature extractor is frozen (weights and BatchNorm statistics); the attention
and perception branches learn.

Beyond the paper (after Teso & Kersting's explanatory interactive learning,
2019), each edit also yields a counterexample: the image with the pixels the
expert marked irrelevant (corrected map < 0.5) taken from another training
image, with the same label. L_map moves the map, but (1 + M) * g still passes
the ignored region's features at weight 1, so a shortcut survives it alone;
the counterexamples take the shortcut's evidence away.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from finetune import checkpoint
from finetune.data import DataError, ImageFolder
from finetune.evaluate import evaluate, predict
from finetune.images import normalize, resize_map
from finetune.model import ABN
from finetune.train import lr_factor, make_optimizer
from finetune.visualize import map_rows

RELEVANT = 0.5  # a corrected map at or above this marks a pixel the expert wants attended


@dataclass
class TuneConfig:
    gamma: float = 1.0  # weight of L_map; 0 turns it off
    counterexamples: bool = True
    copies: int = 8  # counterexamples made from each edit per pass (at most a batch's worth), each with another fill
    freeze_features: bool = True
    epochs: int = 8
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    seed: int = 0


def map_loss(attention: torch.Tensor, edits: torch.Tensor, has_map: torch.Tensor) -> torch.Tensor:
    """Mean over edited samples of ||M' - M||_2; edits at any size are resized to the map's."""
    if not has_map.any():
        return attention.sum() * 0
    target = resize_map(edits[has_map], tuple(attention.shape[-2:]))
    return (attention[has_map] - target).flatten(1).norm(dim=1).mean()


def counterexamples(
    images: torch.Tensor, maps: torch.Tensor, has_map: torch.Tensor, generator: torch.Generator, copies: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each edited image of the batch, copies whose irrelevant pixels come from other images of the
    batch; returns the copies and the indices of the images they were made from."""
    index = has_map.nonzero().flatten().repeat(copies)
    if len(images) < 2 or len(index) == 0:
        return images[:0], index
    if len(index) > len(images):  # at most double a batch, so that many edits do not slow a pass down
        index = index[torch.randperm(len(index), generator=generator)[: len(images)]]
    shift = torch.randint(1, len(images), (len(index),), generator=generator)
    partner = (index + shift) % len(images)  # never the image itself
    keep = maps[index] >= RELEVANT
    return torch.where(keep, images[index], images[partner]), index


def trainable_mode(model: ABN, freeze_features: bool) -> None:
    """Training mode for the branches; the frozen feature extractor keeps its BatchNorm statistics."""
    model.train()
    if freeze_features:
        model.features.eval()


def fine_tune(
    model: ABN, dataset: Dataset, mean: list[float], std: list[float], cfg: TuneConfig, progress: bool = True
) -> list[dict]:
    """Fine-tune model in place on dataset (items with and without maps); the per-epoch losses."""
    torch.manual_seed(cfg.seed)
    for p in model.features.parameters():
        p.requires_grad_(not cfg.freeze_features)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer("sgd", params, cfg.lr, 0.9, cfg.weight_decay)
    steps = cfg.epochs * len(DataLoader(dataset, batch_size=cfg.batch_size))
    gen = torch.Generator().manual_seed(cfg.seed)
    history, step = [], 0
    for epoch in range(cfg.epochs):
        trainable_mode(model, cfg.freeze_features)
        sums = {"loss": 0.0, "att": 0.0, "per": 0.0, "map": 0.0}
        batches = 0
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=gen)
        for batch in tqdm(
            loader, desc=f"fine-tune {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, disable=not progress
        ):
            x, y, m, has = batch["image"], batch["label"], batch["map"], batch["has_map"]
            if cfg.counterexamples:
                extra, index = counterexamples(x, m, has, gen, cfg.copies)
                x, y = torch.cat([x, extra]), torch.cat([y, y[index]])
                m, has = torch.cat([m, m[index]]), torch.cat([has, has[index]])
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor("cosine", step, steps, 0)
            out = model(normalize(x, mean, std))
            l_att = F.cross_entropy(out.attention_logits, y)
            l_per = F.cross_entropy(out.logits, y)
            l_map = map_loss(out.attention, m, has) if cfg.gamma else torch.zeros(())
            loss = l_att + l_per + cfg.gamma * l_map
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            batches += 1
            for k, v in (("loss", loss), ("att", l_att), ("per", l_per), ("map", l_map)):
                sums[k] += v.item()
        history.append({"epoch": epoch + 1, **{k: v / batches for k, v in sums.items()}})
    model.eval()
    return history


def run(parent: str | Path, images: str | Path, maps: str | Path, out: str | Path, cfg: TuneConfig) -> dict:
    """The finetune command: the parent checkpoint + an image folder with corrected maps -> a new checkpoint
    (version + 1) and a report, in out."""
    model, meta = checkpoint.load(parent)
    folder = ImageFolder(images, tuple(meta["input_size"]), maps, classes=meta["classes"])
    if folder.map_count == 0:
        raise DataError(
            f"no image in {images} has a map in {maps}: "
            f"expected {maps}/<class>/<image name>.png beside {images}/<class>/<image>"
        )
    mean, std = meta["mean"], meta["std"]
    edited = [i for i, (_, _, m) in enumerate(folder.samples) if m is not None][:8]
    shown = torch.stack([folder[i]["image"] for i in edited])
    _, maps_before = predict(model, shown, mean, std)
    before = evaluate(model, folder, mean, std)

    history = fine_tune(model, folder, mean, std, cfg)

    after = evaluate(model, folder, mean, std)
    _, maps_after = predict(model, shown, mean, std)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tuned_on = {
        "data": str(Path(images).resolve()),
        "maps": str(Path(maps).resolve()),
        "images": len(folder),
        "edited": folder.map_count,
        "config": asdict(cfg),
    }
    new_meta = checkpoint.next_version(meta, {"parent": meta["trained_on"], "finetuned_on": tuned_on})
    checkpoint.save(out / "checkpoint.pt", model, new_meta)
    report = {
        "parent": str(parent),
        "checkpoint": str(out / "checkpoint.pt"),
        "version": new_meta["version"],
        "parent_version": meta["version"],
        "finetuned_on": tuned_on,
        "history": history,
        "before": before,
        "after": after,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [(folder[i]["image"], [None, maps_before[j], folder[i]["map"], maps_after[j]]) for j, i in enumerate(edited)]
    map_rows(rows, ["image", "map before", "corrected map", "map after"], out / "report.png")
    print(
        f"version {meta['version']} -> {new_meta['version']}: accuracy {before['accuracy']:.4f} -> "
        f"{after['accuracy']:.4f}, attention inside the corrected maps {before['map_share']:.3f} -> "
        f"{after['map_share']:.3f}, IoU {before['map_iou']:.3f} -> {after['map_iou']:.3f}"
    )
    print(f"wrote {out / 'checkpoint.pt'}, report.json, report.png")
    return report
