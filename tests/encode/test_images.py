"""PNG and WEBP thumbnail encoding (real Pillow codecs)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from genjobs.encode.images import encode_images, thumbnail_size


def frames(count: int, height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize(
    ("size", "thumb"),
    [
        ((1024, 1024), (256, 256)),
        ((480, 832), (147, 256)),
        ((1024, 576), (256, 144)),
    ],
)
def test_thumbnail_longest_edge_is_256(size: tuple[int, int], thumb: tuple[int, int]) -> None:
    assert thumbnail_size(*size) == thumb


def test_batch_round_trips_pixels_in_order_with_webp_thumbnails() -> None:
    originals = frames(3, 576, 1024)
    encoded = encode_images(originals, compress_level=1)
    for pixels, result in zip(originals, encoded, strict=True):
        png = Image.open(io.BytesIO(result.png))
        assert png.format == "PNG" and png.size == (1024, 576)
        assert np.array_equal(np.asarray(png.convert("RGB")), pixels)
        thumb = Image.open(io.BytesIO(result.thumbnail))
        assert thumb.format == "WEBP" and thumb.size == (256, 144)
        assert (result.width, result.height) == (1024, 576)


def test_encoding_is_deterministic() -> None:
    batch = frames(2, 256, 256)
    assert [e.png for e in encode_images(batch)] == [e.png for e in encode_images(batch)]
