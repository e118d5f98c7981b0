"""Data sets: the built-in decoy-digits and image folders with optional corrected maps.

Every item is a dict: image (3 x H x W in [0, 1] at the model's input size),
label (int), map (1 x H x W in [0, 1]; the corrected attention map, zeros when
there is none), has_map (bool), decided (1 x H x W of 0/1: the pixels the
expert decided; zeros where there is no map) and weight (float, how hard the
item pulls in fine-tuning; 1 by default). Normalisation is applied by the
consumer, so that images can be mixed and drawn as they are.

Image-folder format, the one users bring their images and corrections in:

    images/<class>/<any path>.<any Pillow format>
    maps/<class>/<same path>.png      optional, grayscale, white = attend;
                                      alpha, if any: transparent = don't care

A map has its image's aspect ratio at any size. Its alpha channel is its
decided mask (alpha below 128 = not decided); a map without one decides every
pixel. At the model's size a pixel counts as decided where at least half of it
was (finetune.images.resize_mask).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, random_split

from finetune import decoy_digits
from finetune.augment import Augmented, augmented
from finetune.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    check_aspect,
    decided_tensor,
    image_tensor,
    map_tensor,
    open_image,
    resize_map,
    resize_mask,
)
from finetune.progress import track

BUILTIN = ("decoy-digits",)
# Natural images are normalised with the ImageNet statistics by convention.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class DataError(ValueError):
    """A data set that cannot be used; the message says what to fix."""


class TensorSet(Dataset):
    """An in-memory set: images N x C x H x W (C = 1 or 3), labels N, maps N x 1 x H x W or None,
    has_map N (default: every item has a map when maps are given), decided N x 1 x H x W of 0/1 (default:
    every pixel of a map), weights N (default 1)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        maps: torch.Tensor | None = None,
        has_map: torch.Tensor | None = None,
        decided: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ):
        self.images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        self.labels = labels
        self.maps = maps if maps is not None else torch.zeros_like(images[:, :1])
        self.has_map = has_map if has_map is not None else torch.full((len(labels),), maps is not None)
        self.decided = decided if decided is not None else torch.ones_like(self.maps[:1]).expand_as(self.maps)
        self.weights = weights if weights is not None else torch.ones(len(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        has = bool(self.has_map[i])
        return {
            "image": self.images[i],
            "label": int(self.labels[i]),
            "map": self.maps[i],
            "has_map": has,
            "decided": self.decided[i] if has else torch.zeros_like(self.maps[i]),
            "weight": float(self.weights[i]),
        }


class ImageFolder(Dataset):
    """One sub-folder per class; an optional parallel folder of corrected maps.

    Every image and map is decoded once up front, so a broken file is reported
    before any training starts rather than in the middle of it.
    """

    def __init__(
        self, root: str | Path, size: tuple[int, int], maps: str | Path | None = None, classes: list[str] | None = None
    ):
        self.root, self.size = Path(root), size
        self.maps_root = Path(maps) if maps is not None else None
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a folder")
        if self.maps_root is not None and not self.maps_root.is_dir():
            raise DataError(f"maps folder {self.maps_root} does not exist or is not a folder")
        class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            stray = sorted(p.name for p in self.root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:3]
            hint = (
                f" (found images at the top level: {', '.join(stray)}; move them into class folders)" if stray else ""
            )
            raise DataError(
                f"image folder {self.root} has no class sub-folders; expected {self.root}/<class>/<image>{hint}"
            )
        names = [d.name for d in class_dirs]
        self.classes = list(classes) if classes is not None else names
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise DataError(
                f"image folder {self.root} has classes the model does not know: {', '.join(unknown)} "
                f"(known: {', '.join(self.classes)})"
            )
        self.samples: list[tuple[Path, int, Path | None]] = []
        for d in class_dirs:
            files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DataError(
                    f"class folder {d} holds no images (readable formats: "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS)[:8])}, ...)"
                )
            label = self.classes.index(d.name)
            self.samples += [(p, label, self._map_path(p)) for p in files]
        if self.maps_root is not None:
            self._check_strays()
        for path, _, map_path in track(self.samples, desc=f"checking {self.root.name}", leave=False, unit="img"):
            self._check(path, map_path)

    def _check_strays(self) -> None:
        """A map that matches no image is a naming mistake that would silently drop a correction."""
        assert self.maps_root is not None
        matched = {m for _, _, m in self.samples if m is not None}
        strays = sorted(p for p in self.maps_root.rglob("*.png") if p not in matched)
        if strays:
            rel = strays[0].relative_to(self.maps_root)
            raise DataError(
                f"maps folder {self.maps_root} has {len(strays)} map(s) that match no image in "
                f"{self.root}, e.g. {rel} (expected an image {self.root}/{rel.with_suffix('')}.<ext>); "
                "a map goes at its image's relative path, with the extension .png"
            )

    def _map_path(self, image: Path) -> Path | None:
        if self.maps_root is None:
            return None
        p = (self.maps_root / image.relative_to(self.root)).with_suffix(".png")
        return p if p.is_file() else None

    @staticmethod
    def _check(path: Path, map_path: Path | None) -> None:
        try:
            image = open_image(path)
            if map_path is not None:
                check_aspect(open_image(map_path, "map").size, image.size, f"map {map_path}")
        except ImageError as e:
            raise DataError(str(e)) from e

    @property
    def map_count(self) -> int:
        return sum(m is not None for _, _, m in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        path, label, map_path = self.samples[i]
        image = image_tensor(open_image(path), self.size)
        if map_path is None:
            m = decided = torch.zeros(1, *self.size)
        else:
            picture = open_image(map_path, "map")
            m = resize_map(map_tensor(picture), self.size)
            decided = resize_mask(decided_tensor(picture), self.size)
        return {
            "image": image,
            "label": label,
            "map": m,
            "has_map": map_path is not None,
            "decided": decided,
            "weight": 1.0,
        }


SizedSet = TensorSet | ImageFolder | Subset | Augmented  # the data sets training takes: each knows its length


@dataclass
class Data:
    """What training needs: splits, class names, normalisation, and a record of the source."""

    classes: list[str]
    train: SizedSet
    val: SizedSet
    mean: list[float]
    std: list[float]
    source: dict
    evals: dict[str, SizedSet] = field(default_factory=dict)  # further evaluation sets, e.g. test


@dataclass
class DataConfig:
    """Which images to learn from: a built-in set (and its options) or an image folder."""

    data: str = "decoy-digits"  # a built-in set (BUILTIN) or an image folder with one sub-folder per class
    maps: str | None = None  # folder of corrected maps parallel to an image folder
    val_data: str | None = None  # image folder for validation; default: a share of data
    val_fraction: float = 0.1  # share of an image folder held out for validation
    decoy: str = "glyph"  # decoy-digits: kind of decoy (decoy_digits.DECOY_KINDS)
    decoy_size: int | None = None  # decoy-digits: decoy side in pixels (default per kind)
    clean: bool = False  # decoy-digits: the same splits without decoys
    data_seed: int = 0  # decoy-digits: seed of shifts and decoy placement; image folders: of the split
    # of the training split: finetune.augment.AUGMENTS; None: none, or photo for a run from pretrained weights
    # (finetune.train fills it)
    augment: str | None = None


def builtin_split(cfg: DataConfig, split: str, size: tuple[int, int]) -> TensorSet:
    """One split of a built-in set at the model's input size."""
    images, labels, masks, _ = decoy_digits.build(split, cfg.decoy, cfg.decoy_size, cfg.clean, cfg.data_seed)
    if tuple(images.shape[-2:]) != tuple(size):
        images, masks = resize_map(images, size), resize_map(masks, size)
    return TensorSet(images, labels, masks)


def folder_splits(folder: ImageFolder, cfg: DataConfig, size: tuple[int, int]) -> tuple[SizedSet, SizedSet]:
    """(train, val) of an image folder: val_data when given, else a seeded share of the folder."""
    if cfg.val_data:
        return folder, ImageFolder(cfg.val_data, size, classes=folder.classes)
    n_val = max(1, round(len(folder) * cfg.val_fraction))
    if n_val >= len(folder):
        raise DataError(
            f"image folder {cfg.data} has {len(folder)} images: too few to hold {n_val} out "
            "for validation; add images or give --val-data"
        )
    train, val = random_split(folder, [len(folder) - n_val, n_val], torch.Generator().manual_seed(cfg.data_seed))
    return train, val


def load(cfg: DataConfig, size: tuple[int, int]) -> Data:
    """The train/val (and, for built-in sets, test and decoy-only) splits named by the arguments."""
    augment = cfg.augment or "none"
    if cfg.data in BUILTIN:
        tensors = builtin_split(cfg, "train", size)
        mean = [float(tensors.images.mean())] * 3
        std = [float(tensors.images.std())] * 3
        splits = ("test",) + (() if cfg.clean else ("decoy-only",))
        evals: dict[str, SizedSet] = {s: builtin_split(cfg, s, size) for s in splits}
        source: dict = {
            "data": cfg.data,
            "decoy": None if cfg.clean else cfg.decoy,
            "decoy_size": None if cfg.clean else (cfg.decoy_size or decoy_digits.DEFAULT_DECOY_SIZE[cfg.decoy]),
            "data_seed": cfg.data_seed,
            "train_samples": len(tensors),
            "augment": augment,
        }
        train = augmented(tensors, augment)
        return Data(decoy_digits.CLASSES, train, builtin_split(cfg, "val", size), mean, std, source, evals)

    folder = ImageFolder(cfg.data, size, cfg.maps)
    plain, val = folder_splits(folder, cfg, size)
    source = {
        "data": str(Path(cfg.data).resolve()),
        "maps": str(Path(cfg.maps).resolve()) if cfg.maps else None,
        "train_samples": len(plain),
        "maps_count": folder.map_count,
        # the validation split, so that retraining can rebuild it as its trusted check
        "val_data": str(Path(cfg.val_data).resolve()) if cfg.val_data else None,
        "val_fraction": cfg.val_fraction,
        "data_seed": cfg.data_seed,
        "augment": augment,
    }
    return Data(folder.classes, augmented(plain, augment), val, IMAGENET_MEAN, IMAGENET_STD, source)


def _save_gray(t: torch.Tensor, path: Path) -> None:
    Image.fromarray((t.numpy() * 255).round().astype("uint8")).save(path)


def export(cfg: DataConfig, split: str, out: str | Path) -> dict:
    """Write a built-in split as an image folder (out/images) plus its maps (out/maps)."""
    if cfg.data not in BUILTIN:
        raise DataError(f"unknown built-in set {cfg.data!r}; choose one of {', '.join(BUILTIN)}")
    images, labels, masks, _ = decoy_digits.build(split, cfg.decoy, cfg.decoy_size, cfg.clean, cfg.data_seed)
    out = Path(out)
    for name in decoy_digits.CLASSES:
        (out / "images" / name).mkdir(parents=True, exist_ok=True)
        (out / "maps" / name).mkdir(parents=True, exist_ok=True)
    for i in track(range(len(labels)), desc=f"writing {cfg.data}/{split}", unit="img"):
        rel = Path(decoy_digits.CLASSES[int(labels[i])]) / f"{i:05d}.png"
        _save_gray(images[i, 0], out / "images" / rel)
        if masks[i].any():  # decoy-only canvases have no object to attend to
            _save_gray(masks[i, 0], out / "maps" / rel)
    summary = {"data": cfg.data, "split": split, "images": len(labels), "out": str(out)}
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
