"""Benchmark: do corrected maps on a share of real photographs remove a shortcut stamped on one class? (not a test)

Takes any image folder with one sub-folder per class (photographs, scans), holds out a seeded share of each
class for testing, and stamps an artefact (--artefact: a checkerboard tag or a coloured patch, in the top-left
corner) on every training photo of one class (--artefact-class) and of no other, as a photographer's tag, a
scanner's mark or a ruler sits on one class of a user's photographs. It writes, under --out:

    data/train          the training photos, the artefact on its class
    data/test-clean     the test photos as they are
    data/test-wrong     the test photos with the artefact on every class but its own: it points to the wrong class
    data/artefact-only  canvases of a test photo's mean colour with the artefact, labelled its class
    maps/<share>        corrected maps for a seeded share of the training photos, painted as people do: an
                        Ignore stroke over the artefact and a few Attend strokes in the photo's middle (where its
                        subject usually is), partial, some missed or off target (finetune/expert.py), the rest
                        undecided (transparent)

Then it runs the product's own command line: `abn train` from scratch (or from --pretrained weights), and
`abn finetune` of that model on each share of maps, in variants:

    control  the same fine-tune without the maps (no L_map, no counterexamples): do extra epochs alone help?
    paper    L_map alone (Mitsuhara et al.): the map moves off the artefact; does (1 + M) still let it through?
    other    L_map + counterexamples whose Ignore pixels come from photos of other classes (the default)
    noise, blur, mean   the same with a neutral fill of the Ignore pixels (abn finetune --fill)
    transplants  other, and the Ignore pixels also pasted into photos of other classes (abn finetune --transplants)
    transplants-unfrozen  the same with the feature extractor learning too (--unfreeze)

and prints, per model, accuracy on the clean photos, on the photos whose artefact points to the wrong class,
how often the artefact alone makes it say the artefact's class, and the attention inside the artefact's box,
each with a 95 % interval (Wilson for accuracies; paired for the gap clean - wrong, on the same photos).
Writes photos.json, photos.md and photos.png in --out. Reruns resume: prepared data, trained and fine-tuned
checkpoints and finished evaluations are kept.

    .venv/bin/python bench/photos.py /data/flowers --classes daisy dandelion --out runs/photos
    .venv/bin/python bench/photos.py /data/flowers --arch abn_resnet50 --size 224 \\
        --pretrained resnet50-11ad3fa6.pth --out runs/photos-r50          # on a GPU: add --device cuda
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from finetune import checkpoint, expert  # noqa: E402
from finetune.data import ImageFolder  # noqa: E402
from finetune.evaluate import correct, predict  # noqa: E402
from finetune.gate import paired_drop  # noqa: E402
from finetune.images import IMAGE_EXTENSIONS, image_tensor, open_image  # noqa: E402

ARTEFACTS = ("tag", "patch")
VARIANTS = {
    "control": ["--gamma", "0", "--no-counterexamples"],
    "paper": ["--no-counterexamples"],
    "other": ["--fill", "other"],
    "noise": ["--fill", "noise"],
    "blur": ["--fill", "blur"],
    "mean": ["--fill", "mean"],
    "transplants": ["--fill", "other", "--transplants"],
    "transplants-unfrozen": ["--fill", "other", "--transplants", "--unfreeze"],
}
SETS = ("test-clean", "test-wrong", "artefact-only")
Z = NormalDist().inv_cdf(0.975)


def wilson(hits: int, n: int) -> list[float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return [0.0, 1.0]
    p = hits / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def artefact_box(size: int) -> tuple[slice, slice]:
    """Where the artefact sits: the top-left corner, an eighth of the side, one sixty-fourth in."""
    side, margin = max(4, size // 8), size // 64
    return slice(margin, margin + side), slice(margin, margin + side)


def stamp(picture: np.ndarray, kind: str) -> np.ndarray:
    """The photo (H x W x 3 uint8, square) with the artefact at its fixed place."""
    out = picture.copy()
    rows, cols = artefact_box(picture.shape[0])
    side = rows.stop - rows.start
    if kind == "tag":  # a 4 x 4 black-and-white checkerboard
        cell = (np.indices((side, side)) * 4 // side).sum(0) % 2
        out[rows, cols] = (cell[..., None] * 255).astype(np.uint8)
    else:  # a saturated magenta patch, as a colour card in dermoscopy
        out[rows, cols] = (255, 0, 255)
    return out


def scan(folder: Path, classes: list[str] | None) -> dict[str, list[Path]]:
    found = {
        d.name: sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    if classes:
        missing = [c for c in classes if c not in found]
        if missing:
            sys.exit(f"{folder} has no class folder {', '.join(missing)} (it has: {', '.join(found)})")
        found = {c: found[c] for c in classes}
    found = {c: files for c, files in found.items() if files}
    if len(found) < 2:
        sys.exit(f"{folder} needs at least two class folders with images, found {len(found)}")
    return found


def prepare(args, out: Path) -> dict:
    """Writes the data sets (once; a rerun reads the record back) and the maps of each share (once each)."""
    record_path = out / "data" / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else write_sets(args, out)
    for share in args.shares:
        paint(share, record, args.seed, out)
    return record


def write_sets(args, out: Path) -> dict:
    files = scan(Path(args.folder), args.classes)
    classes = list(files)
    marked = args.artefact_class or classes[0]
    if marked not in classes:
        sys.exit(f"--artefact-class {marked} is not one of the classes: {', '.join(classes)}")
    rng = np.random.default_rng(args.seed)
    size, counts = args.size, {}
    tmp = out / "data.partial"
    for c, paths in files.items():
        paths = [paths[i] for i in rng.permutation(len(paths))][: args.per_class]
        n_test = max(1, round(args.test_share * len(paths)))
        counts[c] = {"train": len(paths) - n_test, "test": n_test}
        for i, path in enumerate(paths):
            # decoded and resized as the product reads every image (finetune/images.py), then kept losslessly
            picture = image_tensor(open_image(path), (size, size)).permute(1, 2, 0).mul(255).round().byte().numpy()
            name = f"{path.stem}.png"
            if i >= n_test:
                save(stamp(picture, args.artefact) if c == marked else picture, tmp / "train" / c / name)
                continue
            save(picture, tmp / "test-clean" / c / name)
            save(picture if c == marked else stamp(picture, args.artefact), tmp / "test-wrong" / c / name)
            if i < args.artefact_only:  # spread over the classes' test photos
                canvas = np.broadcast_to(picture.reshape(-1, 3).mean(0).astype(np.uint8), picture.shape)
                save(stamp(canvas, args.artefact), tmp / "artefact-only" / marked / f"{c}-{name}")
        print(f"prepared {c}: {counts[c]['train']} train, {n_test} test", flush=True)
    record = {"classes": classes, "artefact_class": marked, "artefact": args.artefact, "size": size, "counts": counts}
    (tmp / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    tmp.rename(out / "data")
    return record


def paint(share: float, record: dict, seed: int, out: Path) -> None:
    """The simulated experts' maps on a seeded share of the training photos (a larger share holds a smaller
    one's photos, with the same strokes)."""
    target = out / "maps" / f"{share:g}"
    if target.exists():
        return
    train = sorted((out / "data" / "train").rglob("*.png"))
    size = record["size"]
    rows, cols = artefact_box(size)
    box = np.zeros((size, size), bool)
    box[rows, cols] = True
    middle = np.hypot(*(np.indices((size, size)) - (size - 1) / 2) / (0.3 * size)) <= 1  # an ellipse, 60 % across
    chosen = np.random.default_rng(seed + 1).permutation(len(train))[: round(share * len(train))]
    tmp = target.with_name(target.name + ".partial")
    for k in chosen:
        path = train[k]
        edited, decided = expert.strokes(
            middle & ~box,
            box if path.parent.name == record["artefact_class"] else np.zeros_like(box),
            brush=max(1, size // 32),
            length=max(4, size // 6),
            miss=0.1,
            jitter=size / 64,
            wrong=0.1,
            seed=seed * 100_000 + int(k),
        )
        picture = np.stack([edited * 255, decided * 255], -1).round().astype(np.uint8)
        save(picture, tmp / path.relative_to(out / "data" / "train"))
    tmp.rename(target)
    print(f"painted maps on {len(chosen)} of {len(train)} training photos ({share:.0%})", flush=True)


def save(picture: np.ndarray, path: Path) -> None:
    """H x W x 3 (RGB) or H x W x 2 (a map: grey and alpha, the decided pixels) uint8, as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(picture)).save(path)


def abn(*argv: str) -> None:
    """The product's command line, as a user runs it."""
    command = [str(Path(sys.executable).parent / "abn"), *argv]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def measure(ckpt: Path, out: Path, record: dict) -> dict:
    """Accuracy on each evaluation set, the paired gap clean - wrong, and the attention in the artefact's box."""
    model, meta = checkpoint.load(ckpt)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # scored where it trained, on a GPU if any
    size = tuple(meta["input_size"])
    mean, std = meta["mean"], meta["std"]
    figures: dict = {}
    hits = {}
    for name in SETS:
        folder = ImageFolder(out / "data" / name, size, classes=meta["classes"])
        hits[name] = correct(model, folder, mean, std).int().tolist()
        n, k = len(hits[name]), sum(hits[name])
        figures[name] = {"accuracy": k / n, "interval": wilson(k, n), "images": n}
    gap = paired_drop(hits["test-clean"], hits["test-wrong"], 0.95)
    figures["gap"] = {"points": gap["drop"], "interval": gap["interval"]}
    # the attention inside the artefact's box, on the photos that carry it where it points to the wrong class
    wrong = ImageFolder(out / "data" / "test-wrong", size, classes=meta["classes"])
    marked = meta["classes"].index(record["artefact_class"])
    stamped = [i for i, (_, label, _) in enumerate(wrong.samples) if label != marked]
    images = torch.stack([image_tensor(open_image(wrong.samples[i][0]), size) for i in stamped])
    _, maps = predict(model, images, mean, std)
    rows, cols = artefact_box(size[0])
    scale = maps.shape[-1] / size[1]
    inside = maps[
        ...,
        int(rows.start * scale) : math.ceil(rows.stop * scale),
        int(cols.start * scale) : math.ceil(cols.stop * scale),
    ]
    per_image = inside.flatten(1).mean(1) / maps.flatten(1).mean(1).clamp_min(1e-8)
    figures["artefact_attention"] = {"ratio": float(per_image.mean()), "images": len(stamped)}
    return figures


def cell(name: str, ckpt: Path, out: Path, record: dict, results: dict) -> dict:
    if name not in results:
        t0 = time.time()
        results[name] = measure(ckpt, out, record)
        (out / "photos.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"evaluated {name} in {time.time() - t0:.0f} s", flush=True)
    return results[name]


def rows(results: dict) -> list[str]:
    """The table's rows, one per model (bench/tag.py prints the same)."""

    def pct(f: dict) -> str:
        lo, hi = f["interval"]
        return f"{100 * f['accuracy']:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"

    lines = [
        "| model | clean | artefact on the wrong class | gap clean − wrong (points) | artefact alone → its class "
        "| attention in the box ÷ mean |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in results.items():
        lo, hi = f["gap"]["interval"]
        lines.append(
            f"| {name} | {pct(f['test-clean'])} | {pct(f['test-wrong'])} | {100 * f['gap']['points']:+.1f} "
            f"({100 * lo:+.1f} to {100 * hi:+.1f}) | {pct(f['artefact-only'])} "
            f"| {f['artefact_attention']['ratio']:.2f} |"
        )
    return lines


def table(results: dict, record: dict) -> str:
    counts = record["counts"]
    majority = max(c["test"] for c in counts.values()) / sum(c["test"] for c in counts.values())
    sizes = ", ".join(f"{c} ({v['train']}+{v['test']})" for c, v in counts.items())
    n = {s: next(iter(results.values()))[s]["images"] for s in SETS} if results else {}
    return "\n".join(
        [
            f"{record['artefact']} on class {record['artefact_class']}, photos at {record['size']} px, "
            f"classes {sizes} (train+test); always the larger class: {100 * majority:.1f} %",
            "",
            *rows(results),
            "",
            f"(percent, 95 % intervals: Wilson over {n.get('test-clean')} clean, {n.get('test-wrong')} "
            f"wrong-artefact and {n.get('artefact-only')} artefact-only images; the gap paired over the same "
            "photos. One seed: the intervals hold the test photos' chance, not the training run's.)",
        ]
    )


def figure(results: dict, path: Path) -> None:
    names = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
    width = 0.27
    for k, (key, label) in enumerate(
        (("test-clean", "clean"), ("test-wrong", "artefact on the wrong class"), ("artefact-only", "artefact alone"))
    ):
        values = [100 * results[n][key]["accuracy"] for n in names]
        low = [100 * results[n][key]["interval"][0] for n in names]
        high = [100 * results[n][key]["interval"][1] for n in names]
        errors = np.clip([np.subtract(values, low), np.subtract(high, values)], 0, None)
        ax.bar(np.arange(len(names)) + (k - 1) * width, values, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("% (95 % interval)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="image folder, one sub-folder per class")
    p.add_argument("--out", default="runs/photos")
    p.add_argument("--classes", nargs="+", help="class folders to use (default: all)")
    p.add_argument("--artefact", choices=ARTEFACTS, default="tag")
    p.add_argument("--artefact-class", help="the class whose training photos carry it (default: the first)")
    p.add_argument("--size", type=int, default=64, help="photos are resized to this side (the model's input)")
    p.add_argument("--per-class", type=int, help="at most this many photos of each class")
    p.add_argument("--test-share", type=float, default=0.2, help="of each class, held out for testing")
    p.add_argument("--artefact-only", type=int, default=100, help="artefact-only canvases per class")
    p.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.1], help="shares of training photos corrected")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--arch", default="abn_small")
    p.add_argument("--pretrained", help="torchvision ResNet weights to start from (abn train --pretrained)")
    p.add_argument("--train-epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: abn finetune's)")
    p.add_argument("--seed", type=int, default=0, help="of the split, the maps and the runs")
    p.add_argument("--extra", default="", help="more options for both abn train and abn finetune, e.g. --device cuda")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    record = prepare(args, out)
    results_path = out / "photos.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    extra = args.extra.split()

    base = "pretrained" if args.pretrained else "from scratch"
    base_dir = out / base.replace(" ", "-")
    train = ["train", "--data", str(out / "data" / "train"), "--arch", args.arch, "--input-size", str(args.size)]
    train += ["--epochs", str(args.train_epochs), "--seed", str(args.seed), "--out", str(base_dir), "--resume"]
    if args.pretrained:  # without augmentation, as from scratch (--extra "--augment photo" to change it): a crop
        train += ["--pretrained", args.pretrained, "--augment", "none"]  # moves the artefact off its fixed place
    if not (base_dir / "metrics.json").exists():  # written when the run finished
        abn(*train, *extra)
    cell(base, base_dir / "checkpoint.pt", out, record, results)

    for share in args.shares:
        for variant in args.variants:
            name = f"{base}, {share:.0%} corrected, {variant}"
            tuned = out / f"tuned-{share:g}-{variant}"
            if name not in results:
                tune = ["finetune", str(base_dir / "checkpoint.pt"), "--data", str(out / "data" / "train")]
                tune += ["--maps", str(out / "maps" / f"{share:g}"), "--out", str(tuned), "--seed", str(args.seed)]
                tune += ["--epochs", str(args.epochs)] if args.epochs else []
                abn(*tune, *VARIANTS[variant], *extra)
                cell(name, tuned / "checkpoint.pt", out, record, results)

    text = table(results, record)
    print(text)
    (out / "photos.md").write_text(text + "\n")
    figure(results, out / "photos.png")
    print(f"wrote {out / 'photos.json'}, photos.md, photos.png ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
