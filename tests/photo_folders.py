"""Small image folders of colour pictures, as a user brings them: one sub-folder per class, and corrected maps
at the same relative paths in a parallel folder."""

from pathlib import Path

import numpy as np
from PIL import Image


def colour_folder(images: Path, maps: Path, count: int, mapped: int) -> None:
    """Two classes, a (reddish) and b (bluish), of count 32x32 pictures each; the first `mapped` of each class
    get a corrected map that attends to the middle square."""
    rng = np.random.default_rng(0)
    for label, name in enumerate("ab"):
        (images / name).mkdir(parents=True)
        (maps / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8)
            pixels[..., 2 * label] += 120
            Image.fromarray(pixels).save(images / name / f"{i}.png")
            if i < mapped:
                mask = np.zeros((32, 32), np.uint8)
                mask[8:24, 8:24] = 255
                Image.fromarray(mask).save(maps / name / f"{i}.png")
