"""PNG and WEBP thumbnail encoding (real Pillow codecs)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from genjobs.encode.images import encode_images, thumbnail_size
from genjobs.encode.png import encode_rgb_png


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


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_writer_round_trips_through_independent_decoders(level: int) -> None:
    """Pillow (which checks every chunk's CRC) and PyAV (libavcodec) both read the pixels back."""
    rng = np.random.default_rng(level)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), 8, 0), 8, 1)
    grain = rng.integers(0, 256, (72, 56, 3), dtype=np.uint8)
    for pixels in (smooth, grain, np.zeros((1, 1, 3), np.uint8)):
        data = encode_rgb_png(pixels, level)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        decoded = Image.open(io.BytesIO(data))
        decoded.load()  # verifies every chunk's CRC and the zlib stream
        assert (decoded.mode, decoded.size) == ("RGB", (pixels.shape[1], pixels.shape[0]))
        assert np.array_equal(np.asarray(decoded), pixels)
        with av.open(io.BytesIO(data), format="png_pipe") as container:
            frame = next(container.decode(video=0))
        assert np.array_equal(frame.to_ndarray(format="rgb24"), pixels)


def test_png_writer_refuses_anything_but_rgb_bytes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_rgb_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        encode_rgb_png(np.zeros((4, 4, 3), np.float32))


def test_non_contiguous_pixels_encode_as_their_values() -> None:
    wide = frames(1, 32, 64)[0]
    view = wide[:, ::2]  # a strided view, as a crop or a channel slice would be
    decoded = np.asarray(Image.open(io.BytesIO(encode_rgb_png(view))))
    assert np.array_equal(decoded, view)
