"""Benchmark: corrections against a tag in a fixed place on the built-in set, and what fills the ignored pixels
(not a test).

`decoy-digits --decoy tag` stamps a checkerboard in the top-left corner of every training image of class 0; in
the test split it sits on every image of the other classes. This trains a model on it with `abn train`, keeps
the object masks of a seeded share of the training images as corrected maps (`abn export-data`, the rest
deleted), fine-tunes it with `abn finetune` in the variants of bench/photos.py (control: no maps; paper: L_map
alone, the check of whether (1 + M) lets the tag through once the map has left it; other, noise, blur, mean:
L_map + counterexamples with each fill), and prints per model the clean accuracy, the accuracy where the tag
points to the wrong class, their paired gap, the decoy-only accuracy and the attention in the tag's pixels
(÷ the map's mean), with 95 % intervals. Writes tag.json and tag.md in --out; reruns resume.

    .venv/bin/python bench/tag.py --out runs/bench-tag      # ~25 min on two cores
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.photos import VARIANTS, abn, rows, wilson
from finetune import checkpoint, decoy_digits
from finetune.data import TensorSet
from finetune.evaluate import correct, predict
from finetune.gate import paired_drop
from finetune.images import resize_map


def keep_share(maps: Path, share: float, seed: int) -> str:
    """Deletes all but a seeded share of the exported maps (once)."""
    done = maps.parent / "kept"
    if not done.exists():
        paths = sorted(maps.rglob("*.png"))
        keep = set(np.random.default_rng(seed).choice(len(paths), round(share * len(paths)), replace=False).tolist())
        for i, p in enumerate(paths):
            if i not in keep:
                p.unlink()
        done.write_text(f"{len(keep)} of {len(paths)}\n")
    return done.read_text().strip()


def measure(ckpt: Path) -> dict:
    model, meta = checkpoint.load(ckpt)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # scored where it trained, on a GPU if any
    mean, std = meta["mean"], meta["std"]
    size = tuple(meta["input_size"])

    def images(split: str, clean: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, _, decoys = decoy_digits.build(split, "tag", None, clean)
        return resize_map(x, size).expand(-1, 3, -1, -1), y, decoys

    figures: dict = {}
    hits = {}
    sets = (("test-clean", "test", True), ("test-wrong", "test", False), ("artefact-only", "decoy-only", False))
    for name, split, clean in sets:  # named as bench/photos.py names its sets
        x, y, _ = images(split, clean)
        hits[name] = correct(model, TensorSet(x, y), mean, std).int().tolist()
        n, k = len(hits[name]), sum(hits[name])
        figures[name] = {"accuracy": k / n, "interval": wilson(k, n), "images": n}
    gap = paired_drop(hits["test-clean"], hits["test-wrong"], 0.95)
    figures["gap"] = {"points": gap["drop"], "interval": gap["interval"]}
    x, _, decoys = images("test")
    _, maps = predict(model, x, mean, std)
    up = resize_map(maps, tuple(decoys.shape[-2:]))
    tagged = decoys.flatten(1).any(1)
    inside = (up * decoys).flatten(1).sum(1) / decoys.flatten(1).sum(1).clamp_min(1)
    ratio = inside / up.flatten(1).mean(1).clamp_min(1e-8)
    figures["artefact_attention"] = {"ratio": float(ratio[tagged].mean()), "images": int(tagged.sum())}
    return figures


def table(results: dict, kept: str) -> str:
    title = f"decoy-digits --decoy tag; corrected maps (object masks) on {kept} training images"
    note = "(percent, 95 % intervals: Wilson, the gap paired over the same test images; one seed)"
    return "\n".join([title, "", *rows(results), "", note])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-tag")
    p.add_argument("--share", type=float, default=0.05, help="share of training images with a corrected map")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seed", type=int, default=0, help="of the share kept")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "base" / "metrics.json").exists():
        abn("train", "--decoy", "tag", "--out", str(out / "base"), "--resume")
    if not (out / "edits").exists():
        abn("export-data", "--decoy", "tag", "--split", "train", "--out", str(out / "edits"))
    kept = keep_share(out / "edits" / "maps", args.share, args.seed)
    results_path = out / "tag.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in ["base", *args.variants]:
        ckpt = out / name / "checkpoint.pt"
        if name != "base" and not ckpt.exists():
            data = ["--data", str(out / "edits" / "images"), "--maps", str(out / "edits" / "maps")]
            abn("finetune", str(out / "base" / "checkpoint.pt"), *data, "--out", str(out / name), *VARIANTS[name])
        if name not in results:
            results[name] = measure(ckpt)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    text = table(results, kept)
    print(text)
    (out / "tag.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
