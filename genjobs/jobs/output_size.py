"""Worst-case byte sizes of the encoded outputs, known from a plan before any rendering.

Job validation compares these with the bucket's object size limit
(:data:`genjobs.storage.limits.WORKSPACE_TEMP_FILE_SIZE_LIMIT`), so that an output the bucket
could not take is refused before a GPU second is spent.

PNG (:mod:`genjobs.encode.png`): 8-bit RGB scanlines with one filter byte each, in one zlib
stream in one ``IDAT`` chunk. With a non-default memory level zlib's own ``deflateBound`` bounds
the stream by the input plus about 13% (fixed Huffman blocks of 9-bit literals) plus a small
constant, and the zlib wrapper adds 6 bytes; signature, ``IHDR``, ``IEND`` and the ``IDAT``
framing add 57 more.

MP4 (:mod:`genjobs.encode.video`): H.264, 8-bit 4:2:0. The standard caps the coded data of one
macroblock at ``128 + RawMbBits`` bits (Annex A), 3200 bits or 400 bytes for 8-bit 4:2:0;
emulation-prevention bytes can add at most one byte for every two. Slice and NAL headers (and
the encoder's settings message on the first frame) are allowed 1 KiB per frame, and the
container's boxes 64 KiB plus 32 bytes per frame.
"""

from __future__ import annotations

import math

PNG_FIXED_BYTES = 8 + 25 + 12 + 12 + 6
"""Signature, IHDR, IDAT framing, IEND and the zlib wrapper."""
MACROBLOCK_MAX_BYTES = (128 + 256 * 8 + 2 * 64 * 8) // 8
"""400: the H.264 cap on one 8-bit 4:2:0 macroblock's coded data."""
FRAME_HEADER_BYTES = 1024
CONTAINER_FIXED_BYTES = 64 * 1024
CONTAINER_FRAME_BYTES = 32


def png_worst_case_bytes(width: int, height: int) -> int:
    """Largest PNG the encoder can write for an RGB image of ``width`` x ``height``."""
    raw = height * (width * 3 + 1)
    deflated = raw + (raw >> 3) + (raw >> 8) + (raw >> 9) + 4
    return deflated + PNG_FIXED_BYTES


def mp4_worst_case_bytes(width: int, height: int, frames: int) -> int:
    """Largest H.264 MP4 of ``frames`` frames of ``width`` x ``height`` (8-bit 4:2:0)."""
    macroblocks = math.ceil(width / 16) * math.ceil(height / 16)
    frame = macroblocks * MACROBLOCK_MAX_BYTES * 3 // 2 + FRAME_HEADER_BYTES
    return frames * (frame + CONTAINER_FRAME_BYTES) + CONTAINER_FIXED_BYTES
