"""Reading images and attention-map images, and bringing both to the model's sizes.

An image becomes a 3 x H x W float tensor in [0, 1] at the model's input size
(resized without cropping, so a map drawn on the original stays aligned). A map
is a grayscale picture, white = attend, black = not; it becomes 1 x h x w in [0, 1].
Its alpha channel, when it has one, says which pixels the expert decided
(transparent = don't care).
"""

import io
import os
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
# Largest image accepted, in pixels, checked from the header before anything is decoded: a 48-megapixel photo
# (8000x6000) passes; decoding one takes about 150 MB.
MAX_PIXELS = 50_000_000
# Decodes at once in one process (the feedback service decodes in many threads): bounds its memory (one
# decode of the largest image takes about 150 MB) while a serving worker still decodes on every core.
MAX_CONCURRENT_DECODES = max(4, os.cpu_count() or 1)
_decoding = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)


class ImageError(ValueError):
    """An image or map that cannot be used; the message says which and why."""


def open_image(source: bytes | str | Path, what: str = "image") -> Image.Image:
    """Decode an image from bytes or a file, fully, or raise ImageError naming it."""
    name = what if isinstance(source, bytes) else f"{what} {source}"
    if isinstance(source, bytes) and not source:
        raise ImageError(f"{name} is empty")
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if img.width * img.height > MAX_PIXELS:
            raise ImageError(f"{name} is {img.width}x{img.height}, above the limit of {MAX_PIXELS} pixels")
        with _decoding:  # the decode and the copies made from it
            img.load()
            return _upright_8bit(img, name)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f"{name} cannot be decoded: not in an image format Pillow reads") from e
    except Exception as e:  # whatever a decoder raises on these bytes (e.g. NotImplementedError for a DDS
        # variant it cannot read, SyntaxError for broken EXIF) is the bytes' fault
        raise ImageError(f"{name} cannot be decoded: {str(e)[:200] or type(e).__name__}") from e


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
CONVERTIBLE = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


def _upright_8bit(img: Image.Image, name: str) -> Image.Image:
    """The image as a person sees it (EXIF orientation applied), in a mode that converts to RGB and L without
    loss of meaning: 16-bit grey scaled to 8 bits; modes whose range is unknown (32-bit integers or floats) or
    that do not convert (LAB, HSV) refused."""
    if img.getexif().get(0x0112, 1) != 1:  # the Orientation tag
        img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT:
        return Image.fromarray((np.asarray(img, dtype=np.uint32) // 257).astype(np.uint8))
    if img.mode not in CONVERTIBLE:
        raise ImageError(f"{name} has mode {img.mode}, which has no agreed range of values or does not convert to "
                         "RGB: send an 8- or 16-bit image (RGB, grayscale, palette, CMYK)")  # fmt: skip
    return img


def image_tensor(img: Image.Image, size: tuple[int, int]) -> Tensor:
    """RGB 3 x H x W in [0, 1] at size = (H, W)."""
    h, w = size
    img = img.convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def map_tensor(img: Image.Image) -> Tensor:
    """Grayscale 1 x h x w in [0, 1] at the picture's own size."""
    return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None]


def decided_tensor(img: Image.Image) -> Tensor:
    """A map picture's decided pixels, 1 x h x w of 0/1: alpha at least half opaque; all 1 without alpha."""
    if not {"A", "a"} & set(img.getbands()) and "transparency" not in img.info:
        return torch.ones(1, img.height, img.width)
    alpha = np.asarray(img.convert("RGBA").getchannel("A"))
    return torch.from_numpy(alpha >= 128).float()[None]


def check_aspect(map_size: tuple[int, int], image_size: tuple[int, int], name: str) -> None:
    """A map (w, h) must have the image's aspect ratio, up to rounding of one pixel."""
    (mw, mh), (iw, ih) = map_size, image_size
    if abs(mh - mw * ih / iw) > 1 and abs(mw - mh * iw / ih) > 1:
        raise ImageError(
            f"{name} is {mw}x{mh} but its image is {iw}x{ih}: a map must have its image's aspect ratio (any size)"
        )


def resize_map(m: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize maps (... x h x w) to size = (h', w'): area average when shrinking, bilinear otherwise."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    lead = m.shape[:-2]
    flat = m.reshape(-1, 1, *m.shape[-2:])
    if size[0] <= m.shape[-2] and size[1] <= m.shape[-1]:
        out = F.interpolate(flat, size=size, mode="area")
    else:
        out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, *size).clamp(0, 1)


def resize_mask(m: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize 0/1 masks (... x h x w) as maps are (resize_map), then keep the pixels at least half covered."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m.float()
    return (resize_map(m.float(), size) >= 0.5).float()


def normalize(x: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """Normalize a B x 3 x H x W batch in [0, 1] with per-channel mean and std."""
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
