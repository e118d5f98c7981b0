"""Train an ABN: L = CE(attention-branch logits) + CE(perception logits), from random weights or from a
ResNet's ImageNet weights (finetune.pretrained), whose backbone then stays frozen for the first epochs.

From pretrained weights, the options not given follow the ImageNet recipe (pretrained_recipe): the
architecture's input size (224 for the ResNets), ImageNet's mean and std, photo augmentation.

Writes into the run's folder: checkpoint.pt (the model), train_state.pt (what
resuming needs), metrics.json (per-epoch and final figures), attention.png (validation
images with their maps) and curves.png.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from finetune import checkpoint, compute, data, pretrained
from finetune.data import DataConfig
from finetune.evaluate import evaluate, predict
from finetune.images import normalize
from finetune.model import ABN, DEFAULT_INPUT_SIZE, create_model
from finetune.progress import track
from finetune.visualize import attention_grid, curves

DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
# Long enough for the new heads to learn on the ImageNet features before the backbone moves: a few hundred photos
# are a handful of steps per epoch, and the first epoch is the learning rate's warm-up.
PRETRAINED_FREEZE_EPOCHS = 2
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class TrainConfig:
    """One training run; every field but epochs, out, resume and how it computes (compute.FIELDS) defines the
    run, and resuming takes them from the saved state."""

    arch: str = "abn_small"
    pretrained: str | None = None  # a torchvision ResNet state dict to start from (finetune.pretrained)
    freeze_epochs: int | None = None  # epochs the pretrained backbone stays frozen; None: 2 with pretrained, else 0
    input_size: int | None = None  # input side in pixels; None: the architecture's
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"  # one of DEFAULT_LR
    lr: float | None = None  # peak learning rate; None: DEFAULT_LR of the optimizer
    momentum: float = 0.9  # sgd momentum (Nesterov)
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # after warm-up; step: x0.1 at 50% and 75%
    warmup_epochs: float = 1.0  # linear warm-up
    seed: int = 0
    name: str = "abn"  # model name recorded in the checkpoint
    out: str = "runs/train"
    resume: bool = False  # continue the run saved in out
    # how it computes (finetune.compute); not what the run is, so a resumed run takes them as given
    device: str | None = None  # cpu, cuda or auto; None: the CPU (finetune.distributed.World.device_for)
    precision: str = "fp32"  # compute.PRECISIONS; bf16 and fp16 on a GPU only
    channels_last: bool = False  # model and inputs in torch.channels_last; on a GPU only
    workers: int = 0  # DataLoader worker processes; 0: the training process reads the data


def _run_fields(cfg: TrainConfig) -> dict:
    """What defines the run, flat, as train_state.pt keeps it."""
    own = {k: v for k, v in asdict(cfg).items() if k not in ("data", "epochs", "out", "resume", *compute.FIELDS)}
    return {**own, **asdict(cfg.data)}


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _resolve(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """Fill the defaults that depend on other fields; when resuming, the saved state, whose run fields
    replace the given ones (all but epochs)."""
    out = Path(cfg.out)
    state_path = out / "train_state.pt"
    if state_path.exists() and not cfg.resume:
        raise FileExistsError(
            f"{out} holds a training run already: resume it (--resume), or choose another folder (--out)"
        )
    state = None
    if cfg.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        # a setting the run's state lacks came after it was saved: the run had the setting's default
        saved = {**_run_fields(TrainConfig()), **state["args"]}
        data_keys = set(asdict(DataConfig()))
        cfg = replace(
            cfg,
            data=DataConfig(**{k: saved[k] for k in data_keys}),
            **{k: saved[k] for k in _run_fields(cfg) if k not in data_keys},
        )
    freeze = cfg.freeze_epochs
    if freeze is None:
        freeze = PRETRAINED_FREEZE_EPOCHS if cfg.pretrained else 0
    if freeze < 0:
        raise ValueError(f"--freeze-epochs must be 0 or more, got {freeze}")
    if freeze and not cfg.pretrained:
        raise ValueError("--freeze-epochs keeps a pretrained backbone frozen: give --pretrained too, or leave it out")
    return replace(
        cfg,
        input_size=cfg.input_size or DEFAULT_INPUT_SIZE[cfg.arch],
        lr=cfg.lr or DEFAULT_LR[cfg.optimizer],
        freeze_epochs=freeze,
        data=replace(cfg.data, augment=cfg.data.augment or ("photo" if cfg.pretrained else "none")),
    ), state


def pretrained_recipe(given: TrainConfig, resolved: TrainConfig) -> str:
    """What a run from pretrained weights took for the options left open (a line to print): ImageNet
    weights' features expect photographs at their input size, normalised with ImageNet's mean and std, and
    few photographs need augmentation. Options given are kept."""
    chosen = [f"input {resolved.input_size}x{resolved.input_size}"] if given.input_size is None else []
    chosen.append(f"ImageNet's mean {tuple(data.IMAGENET_MEAN)} and std {tuple(data.IMAGENET_STD)}")
    if given.data.augment is None:
        chosen.append(f"--augment {resolved.data.augment}")
    return f"from pretrained weights: {', '.join(chosen)} (the ImageNet recipe, where no option says otherwise)"


def set_frozen(model: ABN, frozen: bool) -> None:
    """Training mode, with the backbone frozen (weights and BatchNorm statistics) or learning.

    The optimizer holds every parameter from the start: a frozen one gets no gradient (zero_grad sets it to
    None), which SGD and AdamW skip, momentum and weight decay included; unfrozen, it learns."""
    model.train()
    for module in model.backbone():
        module.train(not frozen)
        for p in module.parameters():
            p.requires_grad_(not frozen)


def train(cfg: TrainConfig) -> dict:
    given = cfg
    cfg, state = _resolve(cfg)
    assert cfg.input_size is not None and cfg.lr is not None and cfg.freeze_epochs is not None  # _resolve filled them
    run = compute.of(cfg)  # refused here, before any work, where it cannot run
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    size = (cfg.input_size, cfg.input_size)
    d = data.load(cfg.data, size)
    if cfg.pretrained:  # the ImageNet weights' features expect inputs normalised as ImageNet's were
        d = replace(d, mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD)
    model = create_model(cfg.arch, len(d.classes))
    history, start = [], 0
    state_path = out / "train_state.pt"
    origin = None  # where the starting weights came from
    if state is not None:
        model.load_state_dict(state["model"])
        history, start, origin = state["history"], state["epoch"], state.get("pretrained")
        print(f"resuming {out} after epoch {start}")
    elif cfg.pretrained:
        loaded = pretrained.load(model, cfg.arch, cfg.pretrained)
        origin = loaded.origin
        print(loaded.summary())
        print(pretrained_recipe(given, cfg))
    if compute.asked(cfg):
        print(run.describe())
    # while the model is on the CPU: the map size comes from a forward pass of a CPU tensor
    meta = checkpoint.metadata(
        model, cfg.arch, d.classes, size, d.mean, d.std, d.source, name=cfg.name, pretrained=origin
    )
    # the optimizer after the model is on its device: loading its state puts the state beside the weights
    run.place(model)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    scaler = run.scaler()

    steps_per_epoch = math.ceil(len(d.train) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    shuffle = torch.Generator()  # seeded per epoch, so that a resumed run shuffles as an uninterrupted one
    loader = run.batches(d.train, cfg.batch_size, shuffle)
    for epoch in range(start, cfg.epochs):
        frozen = epoch < cfg.freeze_epochs
        set_frozen(model, frozen)
        if frozen and epoch == start:
            last = min(cfg.freeze_epochs, cfg.epochs)
            span = f"epoch {last}" if last == epoch + 1 else f"epochs {epoch + 1}..{last}"
            print(f"{span}: the pretrained backbone is frozen, the heads learn")
        elif epoch == cfg.freeze_epochs and epoch > 0:
            print(f"epoch {epoch + 1}: the backbone learns too")
        shuffle.manual_seed(cfg.seed * 1000 + epoch)
        t0, seen, loss_sum = time.time(), 0, 0.0
        bar = track(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for i, batch in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg.schedule, step, total, warmup)
            y = run.to(batch["label"])
            with run.autocast():
                out_ = model(run.layout(normalize(run.to(batch["image"]), d.mean, d.std)))
                loss = F.cross_entropy(out_.attention_logits, y) + F.cross_entropy(out_.logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)  # fp16: skipped where the scaled gradients overflowed
            scaler.update()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        val = evaluate(model, d.val, d.mean, d.std)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_attention_accuracy": val["attention_accuracy"],
                "seconds": time.time() - t0,
            }
        )
        print(
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {loss_sum / seen:.4f}  val loss {val['loss']:.4f}  "
            f"val acc {val['accuracy']:.4f} (attention branch {val['attention_accuracy']:.4f})  "
            f"{time.time() - t0:.1f}s"
        )
        checkpoint.save(out / "checkpoint.pt", model, meta)
        checkpoint.atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "args": _run_fields(cfg),
                "pretrained": origin,
            },
            state_path,
        )

    final = {"val": evaluate(model, d.val, d.mean, d.std)}
    final.update({name: evaluate(model, ds, d.mean, d.std) for name, ds in d.evals.items()})
    metrics = {
        "checkpoint": str(out / "checkpoint.pt"),
        "metadata": meta,
        "history": history,
        "final": final,
        "compute": run.record(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _figures(model, d, history, out)
    for name, m in final.items():
        print(
            f"{name:>10}: accuracy {m['accuracy']:.4f}  attention branch {m['attention_accuracy']:.4f}  "
            f"({m['samples']} images)"
        )
    print(f"wrote {out / 'checkpoint.pt'}, metrics.json, attention.png, curves.png")
    return metrics


def _figures(model, d: data.Data, history: list[dict], out: Path, count: int = 32) -> None:
    batch = next(iter(DataLoader(d.val, batch_size=count)))
    pred, maps = predict(model, batch["image"], d.mean, d.std)
    titles = [f"{d.classes[t]}→{d.classes[p]}" for t, p in zip(batch["label"].tolist(), pred.tolist())]
    attention_grid(batch["image"], maps, titles, out / "attention.png")
    if history:
        curves(history, ["train_loss", "val_loss", "val_accuracy", "val_attention_accuracy"], out / "curves.png")
