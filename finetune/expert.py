"""A simulated expert: corrects an attention map with a round brush, as a person does.

The person sees the model's map over the image at image size. Two kinds:

correct: a thorough editor. With "remove" strokes (paint 0) they erase
attention that lies off the object, keeping the brush off the object itself;
with "add" strokes (paint 1) they trace the object. A round brush cannot follow
an edge exactly, so added attention spills over the object's edge by up to the
brush radius and attention right next to the object survives the eraser.
Sloppiness: each stroke is missed with probability `miss`, and stroke centres
wander by `jitter` pixels (std), which paints over edges. The result is a whole
map (every pixel decided), as the paper's experts made.

strokes: as people paint in the editor. One Ignore stroke scribbled over the
artefact, one to three Attend strokes along the object, the rest of the map
untouched; it returns the map and the pixels the strokes decided. Sloppiness:
a stroke is missed with probability `miss`, its points wander by `jitter`
pixels (std), and with probability `wrong` a stroke lands shifted by a brush
and a half, partly off its target (an Ignore stroke partly on the object, an
Attend stroke partly on the background).

The ground-truth object mask (and the artefact's) stands in for the person's
knowledge.
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


def _path_mask(shape: tuple[int, ...], points: np.ndarray, radius: int) -> np.ndarray:
    """The pixels a round brush of radius covers along a polyline of (y, x) points."""
    dense = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        steps = max(1, int(np.ceil(2 * np.abs(b - a).max())))  # every half pixel
        dense.append(a + (b - a) * np.linspace(0, 1, steps + 1)[1:, None])
    centres = np.unique(np.round(np.concatenate(dense)).astype(int), axis=0)
    dy, dx = np.nonzero(_disc(radius))
    ys, xs = (centres[:, :1] + dy - radius).ravel(), (centres[:, 1:] + dx - radius).ravel()
    inside = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    covered = np.zeros(shape, bool)
    covered[ys[inside], xs[inside]] = True
    return covered


def _scribble(region: np.ndarray, brush: int) -> np.ndarray:
    """A zigzag over the region's bounding box, rows a brush radius apart, inset so the brush spills a pixel."""
    ys, xs = np.nonzero(region)
    inset = brush - 1
    y0, y1 = ys.min() + inset, max(ys.min() + inset, ys.max() - inset)
    x0, x1 = xs.min() + inset, max(xs.min() + inset, xs.max() - inset)
    rows = np.append(np.arange(y0, y1, brush), y1)
    return np.array([(y, (x0, x1)[k % 2] if j else (x1, x0)[k % 2]) for k, y in enumerate(rows) for j in (0, 1)], float)


def _trace(obj: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A path along the object: from a random pixel of it, steps to neighbouring object pixels, going on in
    about the same direction where it can."""
    ys, xs = np.nonzero(obj)
    k = rng.integers(len(ys))
    here, heading = np.array([ys[k], xs[k]]), None
    path = [here]
    moves = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    for _ in range(length):
        nxt = here + moves
        ok = (nxt >= 0).all(1) & (nxt[:, 0] < obj.shape[0]) & (nxt[:, 1] < obj.shape[1])
        ok[ok] = obj[nxt[ok, 0], nxt[ok, 1]]
        if not ok.any():
            break
        score = rng.random(len(moves)) + (0 if heading is None else 2 * (moves @ heading > 0))
        pick = int(np.argmax(np.where(ok, score, -1)))
        heading, here = moves[pick], nxt[pick]
        path.append(here)
    return np.array(path, float)


def strokes(
    obj: np.ndarray,
    artefact: np.ndarray,
    before: np.ndarray | None = None,
    brush: int = 2,
    attend: tuple[int, int] = (1, 3),
    length: int = 10,
    miss: float = 0.0,
    jitter: float = 0.0,
    wrong: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A stroke-like partial correction: (map H x W float32 in [0, 1], decided H x W bool).

    obj, artefact: H x W bool, what to attend and what to ignore (an empty artefact gets no Ignore stroke);
    before: the model's map at image size, kept where nothing was painted (None: a blank map); attend: the
    fewest and most Attend strokes, each a path of `length` steps along the object; brush: radius in pixels.
    """
    if brush < 1:
        raise ValueError(f"brush radius must be at least 1 pixel, got {brush}")
    obj, artefact = obj.astype(bool), artefact.astype(bool)
    rng = np.random.default_rng(seed)
    edited = np.zeros(obj.shape, np.float32) if before is None else before.astype(np.float32).copy()
    decided = np.zeros(obj.shape, bool)
    paths = [(_scribble(artefact, brush), 0.0)] if artefact.any() else []
    if obj.any():
        paths += [(_trace(obj, length, rng), 1.0) for _ in range(rng.integers(attend[0], attend[1] + 1))]
    for points, value in paths:  # the Ignore stroke first: an Attend stroke over it wins, as in the editor
        if rng.random() < miss:
            continue
        if jitter:
            points = points + rng.normal(0, jitter, points.shape)
        if rng.random() < wrong:
            angle = rng.uniform(0, 2 * np.pi)
            points = points + 1.5 * brush * np.array([np.sin(angle), np.cos(angle)])
        painted = _path_mask(obj.shape, points, brush)
        edited[painted] = value
        decided |= painted
    return edited, decided
