"""A simulated expert: corrects an attention map with a round brush, as a person does.

The person sees the model's map over the image at image size. With "remove"
strokes (paint 0) they erase attention that lies off the object, keeping the
brush off the object itself; with "add" strokes (paint 1) they trace the object.
A round brush cannot follow an edge exactly, so added attention spills over the
object's edge by up to the brush radius and attention right next to the object
survives the eraser. Sloppiness: each stroke is missed with probability `miss`,
and stroke centres wander by `jitter` pixels (std), which paints over edges.
The ground-truth object mask stands in for the person's knowledge.
"""

import numpy as np
from scipy import ndimage


def _disc(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None] ** 2) <= radius**2


def _strokes(targets: np.ndarray, allowed: np.ndarray, radius: int) -> list[tuple[int, int]]:
    """Stroke centres, in raster order, until every target pixel reachable from an allowed centre is covered."""
    covered = np.zeros_like(targets)
    disc = _disc(radius)
    h, w = targets.shape
    centres = []
    for y, x in zip(*np.nonzero(targets & allowed)):
        if covered[y, x]:
            continue
        centres.append((int(y), int(x)))
        y0, x0 = y - radius, x - radius
        sy, sx = slice(max(0, y0), min(h, y + radius + 1)), slice(max(0, x0), min(w, x + radius + 1))
        covered[sy, sx] |= disc[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0]
    return centres


def _paint(
    canvas: np.ndarray,
    centres: list[tuple[int, int]],
    radius: int,
    value: float,
    rng: np.random.Generator,
    miss: float,
    jitter: float,
) -> None:
    h, w = canvas.shape
    yy, xx = np.mgrid[0:h, 0:w]
    for y, x in centres:
        if rng.random() < miss:
            continue
        cy, cx = (y + rng.normal(0, jitter), x + rng.normal(0, jitter)) if jitter else (y, x)
        canvas[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value


def correct(
    mask: np.ndarray,
    before: np.ndarray | None = None,
    brush: int = 2,
    miss: float = 0.0,
    jitter: float = 0.0,
    threshold: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """The corrected map (H x W float32 in [0, 1]) for an object mask (H x W bool).

    before: the model's map at image size (None: start from a blank map);
    brush: stroke radius in pixels; threshold: attention above it off the object is erased.
    """
    mask = mask.astype(bool)
    if brush < 1:
        raise ValueError(f"brush radius must be at least 1 pixel, got {brush}")
    rng = np.random.default_rng(seed)
    edited = np.zeros(mask.shape, np.float32) if before is None else before.astype(np.float32).copy()
    # A careful eraser keeps its whole disc off the object.
    off_object = ~ndimage.binary_dilation(mask, structure=_disc(brush)) if mask.any() else np.ones_like(mask)
    remove = _strokes((edited > threshold) & ~mask, off_object, brush)
    _paint(edited, remove, brush, 0.0, rng, miss, jitter)
    add = _strokes(mask, mask, brush)
    _paint(edited, add, brush, 1.0, rng, miss, jitter)
    return edited
