"""Embedding human knowledge: fine-tuning with corrected attention maps.

The method of Mitsuhara et al., "Embedding Human Knowledge into Deep Neural
Network via Attention Map" (2019):

    L = L_att + L_per + gamma * L_map,   L_map = ||M' - M||_2 per edited sample,

M' the corrected map resized to the model's map, averaged over the edited
samples of a batch; samples without an edit contribute L_att + L_per only. The
feature extractor is frozen (weights and BatchNorm statistics); the attention
and perception branches learn.

People paint strokes, not whole maps: a correction carries the map and the
pixels the expert decided (an Attend stroke sets them to 1, an Ignore stroke to
0; the rest is "don't care"). The paper edits whole maps, every pixel decided;
here L_map is taken on decided pixels only (the mask, area-averaged to the
map's size, weighs each pixel), so an unpainted pixel pulls the map nowhere.
Each sample's terms are multiplied by its weight (a correction's author limit,
see serving/retraining.py; replay weighs 1), without renormalising: a weight
of 0.2 pulls a fifth as hard.

Beyond the paper (after Teso & Kersting's explanatory interactive learning,
2019), each edit also yields counterexamples: the image with the pixels the
expert decided "ignore" (decided and corrected map < 0.5) filled from another
training image, with the same label. L_map moves the map, but (1 + M) * g
still passes the ignored region's features at weight 1, so a shortcut survives
it alone; the counterexamples take the shortcut's evidence away. Counterexamples
come only from Ignore pixels, and their fill is never taken from images of the
same class: an artefact that sits at the same place in every image of a class
(a watermark, a ruler, a scanner tag) would otherwise be filled with itself. A
correction without Ignore pixels makes none. TuneConfig.fill chooses a neutral fill
instead (noise, blur, the mean colour); docs/knowledge.md measures them.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Dataset, DistributedSampler

from finetune import checkpoint, compute, distributed
from finetune.augment import augmented
from finetune.data import DataError, ImageFolder
from finetune.distributed import World
from finetune.evaluate import evaluate, predict
from finetune.images import normalize, resize_map
from finetune.model import ABN
from finetune.progress import track
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
    # With replay (retraining): the corrections are repeated so that they make up at least this share of each
    # epoch; a few dozen corrections among a thousand replayed images would otherwise barely pull.
    correction_share: float = 0.25
    augment: str = "none"  # finetune.augment.AUGMENTS; corrected maps and decided masks follow their image
    fill: str = "other"  # FILLS: what a counterexample's Ignore pixels become
    transplants: bool = False  # also paste each edit's Ignore pixels into images of other classes (transplants())
    # how it computes (finetune.compute); not what the run is, so a resumed run takes them as given
    device: str | None = None  # cpu, cuda or auto; None: finetune.distributed.World.device
    precision: str = "fp32"  # compute.PRECISIONS; bf16 and fp16 on a GPU only
    channels_last: bool = False  # model and inputs in torch.channels_last; on a GPU only
    workers: int = 0  # DataLoader worker processes; 0: the training process reads the data


def map_loss(
    attention: torch.Tensor,
    edits: torch.Tensor,
    has_map: torch.Tensor,
    decided: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over edited samples of weight * ||M' - M||_2 on the decided pixels: the decided mask (default: all),
    area-averaged to the map's size, weighs each pixel's square. Edits and masks at any size are resized to the
    map's. Not renormalised by the weights: a weight of 0.2 pulls a fifth as hard."""
    if not has_map.any():
        return attention.sum() * 0
    size = tuple(attention.shape[-2:])
    diff = attention[has_map] - resize_map(edits[has_map], size)
    if decided is not None:
        diff = diff * resize_map(decided[has_map], size).sqrt()
    per_sample = diff.flatten(1).norm(dim=1)
    if weight is not None:
        per_sample = per_sample * weight[has_map]
    return per_sample.mean()


def ignore_pixels(maps: torch.Tensor, decided: torch.Tensor) -> torch.Tensor:
    """The pixels decided "ignore": decided, and the corrected map below RELEVANT."""
    return (decided >= 0.5) & (maps < RELEVANT)


# What a counterexample's Ignore pixels become. "other": the same pixels of an image of another class in the
# batch (a real image's content, never an artefact's own class); the neutral fills, measured against it in
# bench/photos.py: "noise" (uniform noise), "blur" (the image itself, box-blurred over a quarter of its side, so
# colours stay plausible), "mean" (the image's mean colour).
FILLS = ("other", "noise", "blur", "mean")


def _neutral(images: torch.Tensor, fill: str, generator: torch.Generator) -> torch.Tensor:
    if fill == "noise":
        return torch.rand(images.shape, generator=generator)
    if fill == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images)
    k = max(3, min(images.shape[-2:]) // 4) | 1  # odd, so the blur stays centred
    return F.avg_pool2d(images, k, stride=1, padding=k // 2, count_include_pad=False)


def _edits(ignore: torch.Tensor, has_map: torch.Tensor, generator: torch.Generator, copies: int, batch: int):
    """The edited images with Ignore pixels, each `copies` times, at most a batch's worth (so that many edits do
    not slow a pass down)."""
    index = (has_map & ignore.flatten(1).any(1)).nonzero().flatten().repeat(copies)
    if len(index) > batch:
        index = index[torch.randperm(len(index), generator=generator)[:batch]]
    return index


def _partners(index: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """(the entries of index whose batch holds another class, for each an image of another class, uniformly)."""
    others = labels[index, None] != labels[None]  # len(index) x batch: the partners each copy may take
    index, others = index[others.any(1)], others[others.any(1)]
    # uniform among the other classes' images: the largest of random scores, where allowed
    scores = torch.rand(others.shape, generator=generator).masked_fill(~others, -1)
    return index, scores.argmax(1)


def counterexamples(
    images: torch.Tensor,
    labels: torch.Tensor,
    maps: torch.Tensor,
    decided: torch.Tensor,
    has_map: torch.Tensor,
    generator: torch.Generator,
    copies: int = 1,
    fill: str = "other",
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each edited image of the batch with Ignore pixels, copies whose Ignore pixels are filled (FILLS; with
    "other", from an image of another class in the batch, and none where the batch holds no other class); returns
    the copies and the indices of the images they were made from."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    ignore = ignore_pixels(maps, decided)
    index = _edits(ignore, has_map, generator, copies, len(images))
    if fill != "other":
        return torch.where(ignore[index], _neutral(images[index], fill, generator), images[index]), index
    index, partner = _partners(index, labels, generator)
    return torch.where(ignore[index], images[partner], images[index]), index


def transplants(
    images: torch.Tensor,
    labels: torch.Tensor,
    maps: torch.Tensor,
    decided: torch.Tensor,
    has_map: torch.Tensor,
    generator: torch.Generator,
    copies: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The other direction of a counterexample: for each edited image of the batch with Ignore pixels, copies of
    an image of another class with those pixels pasted in from the edited one; returns the copies and the
    indices of the images they were pasted into, whose labels they keep. What the expert marked irrelevant on
    one image (a tag in a fixed place) then also sits on other classes' images, where it must not change their
    class: counterexamples take it off its class, transplants put it on the others."""
    ignore = ignore_pixels(maps, decided)
    index, partner = _partners(_edits(ignore, has_map, generator, copies, len(images)), labels, generator)
    return torch.where(ignore[index], images[index], images[partner]), partner


def trainable_mode(model: ABN, freeze_features: bool) -> None:
    """Training mode for the branches; the frozen feature extractor keeps its BatchNorm statistics."""
    model.train()
    if freeze_features:
        model.features.eval()


@dataclass
class TuneState:
    """A resumable fine-tune's state file. Rank 0 saves it after every epoch (model, optimizer, epoch,
    history, every rank's generator, the record); a rerun with the same record continues after the saved
    epoch, and one with another record is refused, so that a run never mixes two configurations."""

    path: Path
    record: dict  # what defines the run: the config and what it tunes on
    saved: dict | None = None  # the state found at path when the run began

    @classmethod
    def open(cls, path: str | Path, record: dict, world: World) -> "TuneState":
        """Read path's state (rank 0 reads it, every rank gets it); ValueError naming the first setting
        that differs from record."""
        path = Path(path)
        saved = torch.load(path, map_location="cpu", weights_only=True) if world.is_main and path.exists() else None
        saved = distributed.broadcast(saved, world)
        if saved is not None:
            for key in [*record, *(k for k in saved["record"] if k not in record)]:
                if saved["record"].get(key) != record.get(key):
                    raise ValueError(
                        f"{path} holds a fine-tune with {key} = {saved['record'].get(key)!r}, this run asks for "
                        f"{key} = {record.get(key)!r}: rerun with the same settings to resume it, or choose "
                        "another output folder to start over"
                    )
        return cls(path, record, saved)

    def save(self, world: World, generator: torch.Generator, **state) -> None:
        generators = distributed.gather(generator.get_state(), world)  # each rank draws its own counterexamples
        if world.is_main:
            checkpoint.atomic_save({**state, "generators": generators, "record": self.record}, self.path)


LOSSES = ("loss", "att", "per", "map")


def fine_tune(
    model: ABN,
    dataset: Dataset,
    mean: list[float],
    std: list[float],
    cfg: TuneConfig,
    progress: bool = True,
    world: World | None = None,
    state: TuneState | None = None,
) -> list[dict]:
    """Fine-tune model in place on dataset (items with and without maps); the per-epoch losses.

    world: the processes taking part (default: distributed.start(), the ones torchrun started, or this one
    alone). Under torchrun every rank calls this with the same model and data; each trains on its share of
    every batch (cfg.batch_size is the batch of all ranks together) with DistributedDataParallel, the losses
    are the ranks' mean, and rank 0's model is the result. state: resume from its saved epoch, if any, and
    save it after every epoch. The model ends on the CPU, in eval mode.
    """
    world = world or distributed.start(device=cfg.device)
    run = compute.of(cfg, world)
    device = run.device
    torch.manual_seed(cfg.seed)
    for p in model.features.parameters():
        p.requires_grad_(not cfg.freeze_features)
    run.place(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer("sgd", params, cfg.lr, 0.9, cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + world.rank)  # counterexamples (and one process's shuffle)
    history: list[dict] = []
    start = 0
    if state is not None and state.saved is not None:
        saved = state.saved
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        history, start = saved["history"], saved["epoch"]
        if len(saved["generators"]) == world.world_size:
            gen.set_state(saved["generators"][world.rank])
        else:  # saved by another number of processes: fresh streams, still seeded
            gen.manual_seed(cfg.seed + world.rank + 1_000_003 * start)
    dataset = augmented(dataset, cfg.augment)  # every read a fresh draw, so every epoch sees other crops
    # DDP syncs the gradients of the parameters that require them: the frozen features are left out
    net = DDP(model, device_ids=[device] if device.type == "cuda" else None) if world.distributed else model
    sampler: DistributedSampler | None = (
        DistributedSampler(dataset, world.world_size, world.rank, seed=cfg.seed) if world.distributed else None
    )
    batch_size = -(-cfg.batch_size // world.world_size)
    loader = run.batches(dataset, batch_size, gen, sampler)
    scaler = run.scaler()
    steps, step = cfg.epochs * len(loader), start * len(loader)
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        trainable_mode(model, cfg.freeze_features)
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new order every epoch, the same split on every rank
        sums = torch.zeros(len(LOSSES), dtype=torch.float64, device=device)
        seen = 0  # items of the data set this rank trained on this epoch (counterexamples not counted)
        for batch in track(
            loader,
            desc=f"fine-tune {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not (progress and world.is_main),
        ):
            x, y, m, has = batch["image"], batch["label"], batch["map"], batch["has_map"]
            d, w = batch["decided"], batch["weight"].float()
            seen += len(y)
            made = []  # (copies, the rows whose label, map and weight each takes), on the CPU, where gen is
            if cfg.counterexamples:
                made.append(counterexamples(x, y, m, d, has, gen, cfg.copies, cfg.fill))
            if cfg.transplants:
                made.append(transplants(x, y, m, d, has, gen, cfg.copies))
            for extra, index in made:
                x, y = torch.cat([x, extra]), torch.cat([y, y[index]])
                m, has = torch.cat([m, m[index]]), torch.cat([has, has[index]])
                d, w = torch.cat([d, d[index]]), torch.cat([w, w[index]])
            x, y, m, has, d, w = (run.to(t) for t in (x, y, m, has, d, w))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor("cosine", step, steps, 0)
            with run.autocast():
                out = net(run.layout(normalize(x, mean, std)))
                l_att = (F.cross_entropy(out.attention_logits, y, reduction="none") * w).mean()
                l_per = (F.cross_entropy(out.logits, y, reduction="none") * w).mean()
                l_map = map_loss(out.attention, m, has, d, w) if cfg.gamma else l_att.new_zeros(())
                loss = l_att + l_per + cfg.gamma * l_map
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)  # fp16: skipped where the scaled gradients overflowed
            scaler.update()
            step += 1
            sums += torch.stack([loss, l_att, l_per, l_map]).detach().float()
        means = distributed.all_mean(sums / len(loader), world).tolist()
        images = distributed.gather(seen, world)  # per rank: which of them trained, and on how much
        history.append(
            {"epoch": epoch + 1, **dict(zip(LOSSES, means)), "images": images, "seconds": round(time.time() - t0, 3)}
        )
        if state is not None:
            state.save(
                world, gen, model=model.state_dict(), optimizer=opt.state_dict(), epoch=epoch + 1, history=history
            )
    run.release(model)
    model.eval()
    return history


STATE = "tune_state.pt"  # in the output folder: what resuming needs


def run(parent: str | Path, images: str | Path, maps: str | Path, out: str | Path, cfg: TuneConfig) -> dict:
    """The finetune command: the parent checkpoint + an image folder with corrected maps -> a new checkpoint
    (version + 1) and a report, in out; the report (an empty dict on ranks other than 0).

    Under torchrun every process reads the parent and the folders (on every machine, at the same paths) and
    trains its share (see fine_tune); rank 0 alone writes out. A rerun with the same out and settings
    resumes after the last epoch saved there (STATE); other settings are refused, but for how it computes
    (compute.FIELDS), which may change between the runs."""
    world = distributed.start(device=cfg.device)
    try:
        return _run(parent, images, maps, Path(out), cfg, world)
    finally:
        distributed.stop()


def _run(parent: str | Path, images: str | Path, maps: str | Path, out: Path, cfg: TuneConfig, world: World) -> dict:
    run_on = compute.of(cfg, world)  # refused here, before the folder is read, where it cannot run
    model, meta = checkpoint.load(parent)
    folder = ImageFolder(images, tuple(meta["input_size"]), maps, classes=meta["classes"])
    if folder.map_count == 0:
        raise DataError(
            f"no image in {images} has a map in {maps}: "
            f"expected {maps}/<class>/<image name>.png beside {images}/<class>/<image>"
        )
    tuned_on = {
        "data": str(Path(images).resolve()),
        "maps": str(Path(maps).resolve()),
        "images": len(folder),
        "edited": folder.map_count,
        "config": asdict(cfg),
    }
    inputs = {k: v for k, v in tuned_on.items() if k != "config"}
    what = {k: v for k, v in asdict(cfg).items() if k not in compute.FIELDS}
    state = TuneState.open(out / STATE, {"parent": str(Path(parent).resolve()), **inputs, **what}, world)
    if world.is_main and state.saved is not None:
        done = state.saved["epoch"]
        print(
            f"{out} holds this fine-tune finished: scoring it again"
            if done == cfg.epochs
            else f"resuming {out} after epoch {done} of {cfg.epochs}"
        )
    if world.is_main and world.distributed:
        print(f"fine-tuning on {world.world_size} processes ({dist.get_backend()}, {run_on.device.type})")
    if world.is_main and compute.asked(cfg):
        print(run_on.describe())
    mean, std = meta["mean"], meta["std"]

    history = fine_tune(model, folder, mean, std, cfg, world=world, state=state)
    if not world.is_main:
        return {}

    # the parent is scored after training, read again, so that no rank waits in a collective meanwhile
    parent_model, _ = checkpoint.load(parent)
    edited = [i for i, (_, _, m) in enumerate(folder.samples) if m is not None][:8]
    shown = torch.stack([folder[i]["image"] for i in edited])
    _, maps_before = predict(parent_model, shown, mean, std)
    before = evaluate(parent_model, folder, mean, std)
    after = evaluate(model, folder, mean, std)
    _, maps_after = predict(model, shown, mean, std)
    out.mkdir(parents=True, exist_ok=True)
    new_meta = checkpoint.next_version(meta, {"parent": meta["trained_on"], "finetuned_on": tuned_on})
    checkpoint.save(out / "checkpoint.pt", model, new_meta)
    report = {
        "parent": str(parent),
        "checkpoint": str(out / "checkpoint.pt"),
        "version": new_meta["version"],
        "parent_version": meta["version"],
        "finetuned_on": tuned_on,
        "processes": world.world_size,
        "compute": run_on.record(),
        "history": history,
        "before": before,
        "after": after,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [(folder[i]["image"], [None, maps_before[j], folder[i]["map"], maps_after[j]]) for j, i in enumerate(edited)]
    map_rows(rows, ["image", "map before", "corrected map", "map after"], out / "report.png")

    def change(key: str) -> str:
        return " -> ".join("-" if f.get(key) is None else f"{f[key]:.3f}" for f in (before, after))

    print(
        f"version {meta['version']} -> {new_meta['version']}: accuracy {before['accuracy']:.4f} -> "
        f"{after['accuracy']:.4f}; on the decided pixels of the corrected maps: attention inside "
        f"{change('map_share')}, IoU {change('map_iou')}"
    )
    print(f"wrote {out / 'checkpoint.pt'}, report.json, report.png ({STATE}: resumes this run)")
    return report
