"""Benchmark: does fine-tuning on corrected maps repair a shortcut? (not a test)

On decoy-digits: a clean model (upper bound) and a decoy-trained baseline are
trained once; then the baseline is fine-tuned with simulated-expert corrections
on a share of the training images, in four variants:

    control          same fine-tune, no L_map, no counterexamples
    paper            L_map only (Mitsuhara et al.)
    counterexamples  counterexamples only
    both             L_map + counterexamples (the product's default)

and three kinds of corrections (finetune/expert.py):

    whole             the paper's: whole edited maps, every pixel decided
    strokes           as people paint: an Ignore stroke over the decoy, one to three
                      Attend strokes on the digit, the rest untouched; with the mask
                      of the painted pixels (only those decided)
    strokes-unmasked  the same strokes without the mask: every unpainted pixel keeps
                      the model's map and is trained on as if the expert had confirmed it

Per cell (corrections x variant x edit share), over the seeds (edit selection,
strokes, fine-tune order): random-decoy test accuracy, decoy-only accuracy, the
share of attention on the object and on the decoy, and the IoU of the
thresholded map with the object mask. Prints the table, writes knowledge.json
and knowledge.png. Runs resume: trained models and finished cells are kept in
--out.

    .venv/bin/python bench/knowledge.py --out runs/bench-knowledge
    .venv/bin/python bench/knowledge.py --quick --out runs/bench-knowledge-quick   # minutes, not hours
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from finetune import checkpoint, decoy_digits, expert, train  # noqa: E402
from finetune.data import DataConfig, TensorSet  # noqa: E402
from finetune.evaluate import evaluate, predict  # noqa: E402
from finetune.images import resize_map  # noqa: E402
from finetune.knowledge import TuneConfig, fine_tune  # noqa: E402

VARIANTS = {
    "control": dict(gamma=0.0, counterexamples=False),
    "paper": dict(gamma=1.0, counterexamples=False),
    "counterexamples": dict(gamma=0.0, counterexamples=True),
    "both": dict(gamma=1.0, counterexamples=True),
}
CORRECTIONS = ("whole", "strokes", "strokes-unmasked")
METRICS = ("test_accuracy", "decoy_only_accuracy", "object_share", "decoy_share", "object_iou")
# --quick: the strokes against the same strokes unmasked (and whole maps), the default method, one share, two
# seeds, reference models trained briefly (they learn the decoy, or the digit, all the same)
QUICK = dict(
    out="runs/bench-knowledge-quick",
    shares=[0.05],
    seeds=2,
    variants=["both"],
    corrections=list(CORRECTIONS),
    train_epochs=8,
)


def trained(out: Path, clean: bool, epochs: int) -> Path:
    run = out / ("clean" if clean else "decoy")
    train.train(train.TrainConfig(out=str(run), data=DataConfig(clean=clean), epochs=epochs, resume=True))
    return run / "checkpoint.pt"


def measure(model, meta, test: decoy_digits.Split, decoy_only: decoy_digits.Split) -> dict:
    mean, std = meta["mean"], meta["std"]
    on_object = evaluate(model, TensorSet(test.images, test.labels, test.masks), mean, std)
    on_decoy = evaluate(model, TensorSet(test.images, test.labels, test.decoys), mean, std)
    only = evaluate(model, TensorSet(decoy_only.images, decoy_only.labels), mean, std)
    return {
        "test_accuracy": on_object["accuracy"],
        "decoy_only_accuracy": only["accuracy"],
        "object_share": on_object["map_share"],
        "decoy_share": on_decoy["map_share"],
        "object_iou": on_object["map_iou"],
    }


def cell_key(corrections: str, variant: str, share: float) -> str:
    """Whole-map cells keep the key they had before corrections came in kinds, so older runs resume."""
    return f"{variant}@{share}" if corrections == "whole" else f"{variant}/{corrections}@{share}"


def corrected_train_sets(model, meta, share: float, seed: int, kinds: list[str], args) -> dict[str, TensorSet]:
    """The training split with simulated-expert corrections on a random share of its images, per kind of
    correction (the strokes drawn once for both stroke kinds)."""
    split = decoy_digits.build("train")
    n = len(split.labels)
    chosen = np.random.default_rng(seed).permutation(n)[: round(share * n)]
    _, maps = predict(model, split.images[chosen].expand(-1, 3, -1, -1), meta["mean"], meta["std"])
    before = resize_map(maps, tuple(split.images.shape[-2:]))
    has_map = torch.zeros(n, dtype=torch.bool)
    has_map[torch.from_numpy(chosen)] = True
    sets = {}
    if "whole" in kinds:
        edits = torch.zeros_like(split.masks)
        for j, i in enumerate(chosen):
            edits[i, 0] = torch.from_numpy(
                expert.correct(
                    split.masks[i, 0].numpy() > 0,
                    before[j, 0].numpy(),
                    brush=args.brush,
                    threshold=args.erase_above,
                    seed=seed * 100000 + int(i),
                )
            )
        sets["whole"] = TensorSet(split.images, split.labels, edits, has_map)
    if {"strokes", "strokes-unmasked"} & set(kinds):
        edits, decided = torch.zeros_like(split.masks), torch.zeros_like(split.masks)
        for j, i in enumerate(chosen):
            edited, painted = expert.strokes(
                split.masks[i, 0].numpy() > 0,
                split.decoys[i, 0].numpy() > 0,
                before[j, 0].numpy(),
                brush=args.brush,
                miss=args.stroke_miss,
                jitter=args.stroke_jitter,
                wrong=args.stroke_wrong,
                seed=seed * 100000 + int(i),
            )
            edits[i, 0], decided[i, 0] = torch.from_numpy(edited), torch.from_numpy(painted)
        sets["strokes"] = TensorSet(split.images, split.labels, edits, has_map, decided)
        sets["strokes-unmasked"] = TensorSet(split.images, split.labels, edits, has_map)  # every pixel decided
        decided_share = float(decided[has_map].mean())
        print(f"strokes on {len(chosen)} images decide {decided_share:.1%} of their pixels", flush=True)
    return sets


def summarize(cells: dict) -> dict:
    table = {}
    for key, runs in cells.items():
        table[key] = {
            m: (statistics.mean(r[m] for r in runs), statistics.stdev(r[m] for r in runs) if len(runs) > 1 else 0.0)
            for m in METRICS
        }
    return table


def print_table(reference: dict, table: dict, shares: list[float], seeds: int) -> str:
    head = f"{'model':<34}{'edits':>7}" + "".join(f"{m:>22}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for name, r in reference.items():
        lines.append(f"{name:<34}{'-':>7}" + "".join(f"{100 * r[m]:>22.1f}" for m in METRICS))
    for corrections in CORRECTIONS:
        for variant in VARIANTS:
            for share in shares:
                row = table.get(cell_key(corrections, variant, share))
                if row:
                    lines.append(
                        f"{variant + ', ' + corrections:<34}{share:>7.0%}"
                        + "".join(f"{100 * row[m][0]:>14.1f} ± {100 * row[m][1]:>4.1f}" for m in METRICS)
                    )
    lines.append(f"(percent; mean ± std over {seeds} seeds)")
    text = "\n".join(lines)
    print(text)
    return text


def figure(reference: dict, table: dict, shares: list[float], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric, title in zip(
        axes,
        ("test_accuracy", "decoy_only_accuracy", "object_share"),
        ("random-decoy test accuracy", "decoy-only accuracy (shortcut use)", "share of attention on the object"),
    ):
        series = [(c, v) for c in CORRECTIONS for v in VARIANTS if any(cell_key(c, v, s) in table for s in shares)]
        width = 0.8 / len(series)
        for k, (corrections, variant) in enumerate(series):
            rows = [table.get(cell_key(corrections, variant, s)) for s in shares]
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(shares))]
            ax.bar(
                xs,
                [100 * r[metric][0] if r else 0 for r in rows],
                width,
                yerr=[100 * r[metric][1] if r else 0 for r in rows],
                capsize=3,
                label=variant if {c for c, _ in series} == {"whole"} else f"{variant}, {corrections}",
            )
        for name, style in (("clean", "--"), ("baseline", ":")):
            ax.axhline(100 * reference[name][metric], color="black", linestyle=style, linewidth=1, label=name)
        ax.set_xticks(range(len(shares)), [f"edits on {s:.0%}" for s in shares])
        ax.set_ylim(0, 105)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-knowledge")
    p.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.05, 0.2], help="shares of images edited")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--corrections", nargs="+", choices=CORRECTIONS, default=list(CORRECTIONS), help="kinds")
    p.add_argument("--stroke-miss", type=float, default=0.1, help="strokes: chance a stroke is missed")
    p.add_argument("--stroke-jitter", type=float, default=1.0, help="strokes: wander of a stroke's points (px, std)")
    p.add_argument("--stroke-wrong", type=float, default=0.1, help="strokes: chance a stroke lands partly off")
    p.add_argument("--quick", action="store_true", help=f"a run of minutes: {QUICK} unless given")
    p.add_argument("--train-epochs", type=int, default=30, help="epochs of the clean and baseline models")
    p.add_argument("--brush", type=int, default=2, help="simulated expert's brush radius in pixels")
    p.add_argument(
        "--erase-above", type=float, default=0.2, help="simulated expert erases attention above this off the object"
    )
    p.add_argument("--epochs", type=int, default=TuneConfig.epochs, help="fine-tuning epochs")
    p.add_argument("--lr", type=float, default=TuneConfig.lr, help="fine-tuning learning rate")
    args = p.parse_args()
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    test, decoy_only = decoy_digits.build("test"), decoy_digits.build("decoy-only")
    clean_path, base_path = trained(out, True, args.train_epochs), trained(out, False, args.train_epochs)
    reference = {}
    for name, path in (("clean", clean_path), ("baseline", base_path)):
        model, meta = checkpoint.load(path)
        reference[name] = measure(model, meta, test, decoy_only)

    cells_path = out / "cells.json"
    cells = json.loads(cells_path.read_text()) if cells_path.exists() else {}
    base, meta = checkpoint.load(base_path)
    wanted = [(c, v, share) for c in args.corrections for v in args.variants for share in args.shares]
    for share in args.shares:
        for seed in range(args.seeds):
            train_sets: dict[str, TensorSet] = {}
            for corrections, variant, _ in [w for w in wanted if w[2] == share]:
                key = cell_key(corrections, variant, share)
                if any(r["seed"] == seed for r in cells.get(key, [])):
                    continue
                train_sets = train_sets or corrected_train_sets(base, meta, share, seed, args.corrections, args)
                model, _ = checkpoint.load(base_path)
                cfg = TuneConfig(**VARIANTS[variant], epochs=args.epochs, lr=args.lr, seed=seed)
                started = time.time()
                fine_tune(model, train_sets[corrections], meta["mean"], meta["std"], cfg)
                result = {"seed": seed, **measure(model, meta, test, decoy_only), "seconds": time.time() - started}
                cells.setdefault(key, []).append(result)
                cells_path.write_text(json.dumps(cells, indent=2) + "\n")
                print(
                    f"{key} seed {seed}: test {result['test_accuracy']:.3f}  decoy-only "
                    f"{result['decoy_only_accuracy']:.3f}  object share {result['object_share']:.3f}  "
                    f"({result['seconds']:.0f}s)",
                    flush=True,
                )

    table = summarize({cell_key(*w): [r for r in cells[cell_key(*w)] if r["seed"] < args.seeds] for w in wanted})
    text = print_table(reference, table, args.shares, args.seeds)
    gap = reference["clean"]["test_accuracy"] - reference["baseline"]["test_accuracy"]
    recovered = {k: (v["test_accuracy"][0] - reference["baseline"]["test_accuracy"]) / gap for k, v in table.items()}
    for k, v in recovered.items():
        print(f"{k}: recovers {v:.0%} of the accuracy gap between baseline and clean model")
    result = {
        "reference": reference,
        "cells": cells,
        "table": table,
        "gap_recovered": recovered,
        "settings": vars(args),
        "seconds": time.time() - t0,
        "text": text,
    }
    (out / "knowledge.json").write_text(json.dumps(result, indent=2) + "\n")
    figure(reference, table, args.shares, out / "knowledge.png")
    print(f"wrote {out / 'knowledge.json'} and {out / 'knowledge.png'} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
