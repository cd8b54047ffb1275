"""PNG originals and 256 px WEBP thumbnails, encoded in parallel threads.

The PNG writer (``genjobs.encode.png``) and Pillow's WEBP encoder release the GIL while they
compress, so a thread pool scales across cores. PNG uses a low zlib level (any valid PNG is
accepted). Thumbnails are made from the pixels already in memory.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from genjobs.encode.png import encode_rgb_png

THUMBNAIL_EDGE = 256
THUMBNAIL_QUALITY = 85


@dataclass(frozen=True)
class EncodedImage:
    png: bytes
    thumbnail: bytes
    width: int
    height: int
    thumbnail_width: int
    thumbnail_height: int


def to_image(pixels: np.ndarray) -> Image.Image:
    """An RGB PIL image from an (H, W, 3) uint8 array."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    return Image.fromarray(pixels, mode="RGB")


def thumbnail_size(width: int, height: int, edge: int = THUMBNAIL_EDGE) -> tuple[int, int]:
    """Longest edge ``edge`` px, aspect kept, sides floored as the predecessor did.

    1024x1024 -> 256x256, 480x832 -> 147x256, 1024x576 -> 256x144.
    """
    scale = edge / max(width, height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def encode_thumbnail(image: Image.Image) -> tuple[bytes, int, int]:
    """A WEBP thumbnail (quality 85, LANCZOS) with its width and height.

    ``reducing_gap=2`` first shrinks by a whole factor with a box filter while the image stays
    at least twice the thumbnail's size, then resamples with LANCZOS: half the time of a plain
    LANCZOS resize (1024 -> 256: 4.6 ms against 10.3 ms), every pixel within 2 levels of it.
    """
    size = thumbnail_size(*image.size)
    small = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    buffer = io.BytesIO()
    small.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue(), size[0], size[1]


def encode_image(pixels: np.ndarray, compress_level: int = 1) -> EncodedImage:
    image = to_image(pixels)
    thumb, thumb_w, thumb_h = encode_thumbnail(image)
    return EncodedImage(
        png=encode_rgb_png(pixels, compress_level),
        thumbnail=thumb,
        width=image.width,
        height=image.height,
        thumbnail_width=thumb_w,
        thumbnail_height=thumb_h,
    )


def encode_images(
    frames: list[np.ndarray], compress_level: int = 1, workers: int | None = None
) -> list[EncodedImage]:
    """Encode a batch in parallel threads; results keep the input order."""
    if len(frames) <= 1:
        return [encode_image(f, compress_level) for f in frames]
    with ThreadPoolExecutor(max_workers=workers or min(len(frames), 8)) as pool:
        return list(pool.map(lambda f: encode_image(f, compress_level), frames))
