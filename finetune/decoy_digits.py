"""decoy-digits: scikit-learn's handwritten digits with a class-tied decoy.

After Decoy-MNIST (Ross et al., "Right for the Right Reasons", 2017). Each of the
1797 8x8 digits is scaled to 24x24 and placed, shifted a little at random, on a
32x32 canvas. A decoy sits in a random corner: in the training and validation
splits it shows the sample's own class, in the test split a random class. A
network can learn the decoy instead of the digit; the decoy-only set (blank
canvases with the true class's decoy) shows whether it did.

The default decoy is a class glyph, one fixed high-contrast binary 8x8 pattern
per class, which a CNN picks up as a shortcut. Ross et al.'s original, a gray
patch whose shade encodes the class ("shade", 4x4), is ignored by a CNN on these
digits. Every sample carries its object mask (the digit's pixels, zero under the
decoy), which stands in for an expert's corrected map.

The "tag" decoy is an artefact that sits at the same place in every image of one
class, as a watermark, a ruler or a scanner's tag does in photographs: a small
fixed checkerboard in the top-left corner of every training and validation image
of class TAG_CLASS, and of no other. In the test split it points to the wrong
class: it is on every image of the other classes and on none of TAG_CLASS. Its
decoy-only split holds blank canvases with the tag, labelled TAG_CLASS: accuracy
there is how often the tag alone makes the model name its class.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

CANVAS = 32
DIGIT = 24
MAX_SHIFT = 2
SPLITS = ("train", "val", "test", "decoy-only")
DECOY_KINDS = ("glyph", "shade", "tag")
DEFAULT_DECOY_SIZE = {"glyph": 8, "shade": 4, "tag": 4}
TAG_CLASS = 0  # the class whose every training image carries the tag
# Split sizes: 540 test, 180 validation, the remaining 1077 for training.
TEST_SIZE, VAL_SIZE = 540, 180
SPLIT_SEED = 20170301
GLYPH_SEED = 1797
INK = 0.2  # a digit pixel brighter than this belongs to the object mask

CLASSES = [str(d) for d in range(10)]


class Split(NamedTuple):
    images: torch.Tensor  # N x 1 x 32 x 32, 8-bit levels in [0, 1]
    labels: torch.Tensor  # N
    masks: torch.Tensor  # N x 1 x 32 x 32, the digit's pixels (the object)
    decoys: torch.Tensor  # N x 1 x 32 x 32, the decoy's square


def glyphs(size: int = 8) -> np.ndarray:
    """Ten fixed binary patterns, 10 x size x size, one per class (8x8 drawn, scaled by nearest)."""
    rng = np.random.default_rng(GLYPH_SEED)
    base = (rng.random((10, 8, 8)) < 0.5).astype(np.float32)
    index = np.arange(size) * 8 // size
    return base[:, index][:, :, index]


def tag(size: int = 4) -> np.ndarray:
    """The tag: a size x size checkerboard of 0 and 1, bright at its top-left pixel."""
    index = np.arange(size)
    return ((index[:, None] + index[None]) % 2 == 0).astype(np.float32)


def _decoy(kind: str, cls: int, size: int) -> np.ndarray:
    if kind == "glyph":
        return glyphs(size)[cls]
    if kind == "tag":
        return tag(size)
    return np.full((size, size), (255 - 25 * cls) / 255, dtype=np.float32)


def _tagged(split: str, label: int) -> bool:
    """Whether a sample of the tag variant carries the tag: on its class in training, on the others in test."""
    if split == "decoy-only":
        return True
    return (label == TAG_CLASS) != (split == "test")


def _split_indices(n: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    test = order[:TEST_SIZE]
    return {
        "test": test,
        "decoy-only": test,
        "val": order[TEST_SIZE : TEST_SIZE + VAL_SIZE],
        "train": order[TEST_SIZE + VAL_SIZE :],
    }


def build(split: str, decoy: str = "glyph", decoy_size: int | None = None, clean: bool = False, seed: int = 0) -> Split:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if decoy not in DECOY_KINDS:
        raise ValueError(f"unknown decoy {decoy!r}; choose one of {', '.join(DECOY_KINDS)}")
    size = decoy_size or DEFAULT_DECOY_SIZE[decoy]
    if not 1 <= size <= CANVAS // 2:
        raise ValueError(f"decoy size must be between 1 and {CANVAS // 2}, got {size}")
    digits = load_digits()
    index = _split_indices(len(digits.target))[split]
    labels = digits.target[index].astype(np.int64)
    small = torch.from_numpy(digits.images[index].astype(np.float32) / 16.0)[:, None]
    scaled = F.interpolate(small, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False).clamp(0, 1).numpy()

    rng = np.random.default_rng([seed, SPLITS.index(split)])
    n = len(labels)
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(n, 2))
    corners = rng.integers(0, 4, size=n)
    random_classes = rng.integers(0, 10, size=n)

    images = np.zeros((n, 1, CANVAS, CANVAS), dtype=np.float32)
    masks = np.zeros_like(images)
    decoys = np.zeros_like(images)
    offset = (CANVAS - DIGIT) // 2
    for i in range(n):
        if split != "decoy-only":
            r, c = offset + shifts[i]
            images[i, 0, r : r + DIGIT, c : c + DIGIT] = scaled[i, 0]
            masks[i, 0, r : r + DIGIT, c : c + DIGIT] = scaled[i, 0] > INK
        if clean or (decoy == "tag" and not _tagged(split, labels[i])):
            continue
        decoy_class = random_classes[i] if split == "test" else labels[i]
        r = 0 if corners[i] < 2 or decoy == "tag" else CANVAS - size
        c = 0 if corners[i] % 2 == 0 or decoy == "tag" else CANVAS - size
        images[i, 0, r : r + size, c : c + size] = _decoy(decoy, decoy_class, size)
        masks[i, 0, r : r + size, c : c + size] = 0
        decoys[i, 0, r : r + size, c : c + size] = 1
    if decoy == "tag" and split == "decoy-only" and not clean:
        labels[:] = TAG_CLASS  # the tag alone says its class
    # 8-bit levels, so that the set written out as PNG reads back identical.
    images = (np.round(images * 255) / 255).astype(np.float32)
    return Split(*(torch.from_numpy(a) for a in (images, labels, masks, decoys)))
