"""Augmentation for training and fine-tuning: random resized crop, flip and colour jitter, chosen per run.

A corrected map and its decided mask go through the same geometric transform as
their image: the same crop box, scaled to their own resolution, resized back to
their own size, and the same flip; so a correction stays on the pixels it was
drawn on. Colour jitter changes the image only. The kinds (AUGMENTS):

    none   the items as they are
    flip   a horizontal flip, half of the time
    photo  a random resized crop (CROP_SCALE of the area, aspect CROP_RATIO, back to the input size), the
           flip, and colour jitter (JITTER): the usual recipe for photographs

none is the default: a flip turns many digits of the built-in set into shapes
that are no digit, and a crop can cut off the corner decoys the set is about.
Random draws come from torch's global generator, as torchvision's transforms'
do: torch.manual_seed makes a run repeatable, and each DataLoader worker draws
from a stream of its own.
"""

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import ColorJitter

from finetune.images import resize_map, resize_mask

AUGMENTS = ("none", "flip", "photo")
# A quarter of the area at least: on a few hundred photos, smaller crops often miss the object (ImageNet
# recipes go down to 8 %).
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05)


@dataclass(frozen=True)
class Geometry:
    """A crop box as shares of the height and width (top, left, height, width), and whether to flip."""

    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    flip: bool = False


def check(kind: str) -> None:
    if kind not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {kind!r}")


def draw(kind: str, image: Tensor) -> Geometry:
    """A random geometry for kind and an image (C x H x W): the crop box drawn in its pixels."""
    check(kind)
    box = Geometry().box
    if kind == "photo":
        height, width = image.shape[-2:]
        top, left, h, w = RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
        box = (top / height, left / width, h / height, w / width)
    return Geometry(box, kind != "none" and bool(torch.rand(()) < 0.5))


def geometric(t: Tensor, g: Geometry, mask: bool = False) -> Tensor:
    """t (C x h x w) cropped to g's box at its own resolution, resized back to h x w as maps are (a 0/1 mask as
    masks are: finetune.images.resize_mask), flipped when g says so."""
    h, w = t.shape[-2:]
    top, left, bh, bw = g.box
    r0, c0 = round(top * h), round(left * w)
    r1, c1 = max(r0 + 1, round((top + bh) * h)), max(c0 + 1, round((left + bw) * w))
    out = (resize_mask if mask else resize_map)(t[..., r0:r1, c0:c1], (h, w))
    return out.flip(-1) if g.flip else out


def transform(item: dict, g: Geometry, jitter: bool = False) -> dict:
    """A data set item (see finetune.data) with its image, map and decided mask under g; jitter: colour jitter
    on the image alone."""
    image = geometric(item["image"], g)
    return {
        **item,
        "image": JITTER(image) if jitter else image,
        "map": geometric(item["map"], g),
        "decided": geometric(item["decided"], g, mask=True),
    }


def augment(item: dict, kind: str) -> dict:
    """The item under a fresh random draw of kind (the item itself for none)."""
    if kind == "none":
        return item
    return transform(item, draw(kind, item["image"]), jitter=kind == "photo")


class Augmented(Dataset):
    """A data set whose every read is augmented afresh: each epoch sees other crops, flips and colours."""

    def __init__(self, dataset: Dataset, kind: str):
        check(kind)
        self.dataset, self.kind = dataset, kind

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        return augment(self.dataset[i], self.kind)


D = TypeVar("D", bound=Dataset)


def augmented(dataset: D, kind: str) -> D | Augmented:
    """dataset under kind; itself for none, so that a run without augmentation reads exactly what it did."""
    check(kind)
    return dataset if kind == "none" else Augmented(dataset, kind)
