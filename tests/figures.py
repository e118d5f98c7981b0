"""What the figures the product writes must be, for the suites that check them: a PNG of the size its figure was
made at, with something drawn on it in colour.

Every figure draws in colour (attention maps overlaid in a colour map, curves and bars in matplotlib's colours),
while an empty figure is white and empty axes are white, grey and black.
"""

from pathlib import Path

import numpy as np
from PIL import Image


def assert_figure(path: Path, size: tuple[int, int]) -> None:
    """path is a PNG of size (width, height) pixels, at least 0.5% of them in colour."""
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", size), f"{path}: a {image.format} of {image.size}"
        rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    in_colour = float((np.ptp(rgb, axis=2) > 40).mean())  # channels apart: not white, grey or black
    assert in_colour > 0.005, f"{path}: {in_colour:.2%} of its pixels in colour: nothing drawn"
