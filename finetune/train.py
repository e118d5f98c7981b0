"""Train an ABN from scratch: L = CE(attention-branch logits) + CE(perception logits).

Writes into --out: checkpoint.pt (the model), train_state.pt (what --resume
needs), metrics.json (per-epoch and final figures), attention.png (validation
images with their maps) and curves.png.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from finetune import checkpoint, data
from finetune.evaluate import evaluate, predict
from finetune.images import normalize
from finetune.model import DEFAULT_INPUT_SIZE, list_models, create_model
from finetune.visualize import attention_grid, curves

DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
# Arguments that define a run; --resume takes them from the saved state.
RUN_ARGS = ("arch", "input_size", "data", "maps", "val_data", "val_fraction", "decoy", "decoy_size", "clean",
            "data_seed", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs",
            "seed", "name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="abn_small", choices=list_models(), help="architecture")
    parser.add_argument("--input-size", type=int, help="input side in pixels (default: the architecture's)")
    data.add_arguments(parser)
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--optimizer", choices=sorted(DEFAULT_LR), default="sgd")
    g.add_argument("--lr", type=float, help="peak learning rate (sgd 0.1, adamw 0.001)")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd momentum (Nesterov)")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                   help="learning-rate schedule after warm-up (step: x0.1 at 50%% and 75%%)")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up")
    g.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="abn", help="model name recorded in the checkpoint")
    parser.add_argument("--out", default="runs/train", help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")


def default_args(**overrides) -> argparse.Namespace:
    """The arguments of a run with every option at its default, but for overrides."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


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


def _resolve(args: argparse.Namespace) -> tuple[argparse.Namespace, dict | None]:
    """Fill the defaults that depend on other arguments; on --resume, the saved state, whose run arguments
    replace the given ones (all but --epochs)."""
    out = Path(args.out)
    state_path = out / "train_state.pt"
    if state_path.exists() and not args.resume:
        raise SystemExit(f"{out} holds a training run already: pass --resume to continue it, or choose another --out")
    state = None
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        for k in RUN_ARGS:
            setattr(args, k, state["args"][k])
    args.input_size = args.input_size or DEFAULT_INPUT_SIZE[args.arch]
    args.lr = args.lr or DEFAULT_LR[args.optimizer]
    return args, state


def train(args: argparse.Namespace) -> dict:
    args, state = _resolve(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    size = (args.input_size, args.input_size)
    d = data.load(args, size)
    model = create_model(args.arch, len(d.classes))
    opt = make_optimizer(args.optimizer, model.parameters(), args.lr, args.momentum, args.weight_decay)
    history, start = [], 0
    state_path = out / "train_state.pt"
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
        print(f"resuming {out} after epoch {start}")

    steps_per_epoch = math.ceil(len(d.train) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    meta = checkpoint.metadata(model, args.arch, d.classes, size, d.mean, d.std, d.source, name=args.name)
    for epoch in range(start, args.epochs):
        model.train()
        loader = DataLoader(d.train, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        t0, seen, loss_sum = time.time(), 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False)
        for i, batch in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = args.lr * lr_factor(args.schedule, step, total, warmup)
            y = batch["label"]
            out_ = model(normalize(batch["image"], d.mean, d.std))
            loss = F.cross_entropy(out_.attention_logits, y) + F.cross_entropy(out_.logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        val = evaluate(model, d.val, d.mean, d.std)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "val_loss": val["loss"],
                        "val_accuracy": val["accuracy"], "val_attention_accuracy": val["attention_accuracy"],
                        "seconds": time.time() - t0})
        print(f"epoch {epoch + 1}/{args.epochs}  train loss {loss_sum / seen:.4f}  val loss {val['loss']:.4f}  "
              f"val acc {val['accuracy']:.4f} (attention branch {val['attention_accuracy']:.4f})  "
              f"{time.time() - t0:.1f}s")
        checkpoint.save(out / "checkpoint.pt", model, meta)
        checkpoint.atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                                "history": history, "args": {k: getattr(args, k) for k in RUN_ARGS}}, state_path)

    final = {"val": evaluate(model, d.val, d.mean, d.std)}
    final.update({name: evaluate(model, ds, d.mean, d.std) for name, ds in d.evals.items()})
    metrics = {"checkpoint": str(out / "checkpoint.pt"), "metadata": meta, "history": history, "final": final}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _figures(model, d, history, out)
    for name, m in final.items():
        print(f"{name:>10}: accuracy {m['accuracy']:.4f}  attention branch {m['attention_accuracy']:.4f}  "
              f"({m['samples']} images)")
    print(f"wrote {out / 'checkpoint.pt'}, metrics.json, attention.png, curves.png")
    return metrics


def _figures(model, d: data.Data, history: list[dict], out: Path, count: int = 32) -> None:
    batch = next(iter(DataLoader(d.val, batch_size=count)))
    pred, maps = predict(model, batch["image"], d.mean, d.std)
    titles = [f"{d.classes[t]}→{d.classes[p]}" for t, p in zip(batch["label"].tolist(), pred.tolist())]
    attention_grid(batch["image"], maps, titles, out / "attention.png")
    if history:
        curves(history, ["train_loss", "val_loss", "val_accuracy", "val_attention_accuracy"], out / "curves.png")
