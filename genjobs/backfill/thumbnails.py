"""Posters for legacy objects: a 256 px WEBP of an image, or of a video's middle frame.

Videos are decoded with PyAV straight from the MP4 bytes: one pass counts the frames (packets,
no decoding), a second decodes up to frame ``count // 2``, the frame the generation flow uses.
"""

from __future__ import annotations

import io

from PIL import Image

from genjobs.encode.images import encode_thumbnail
from genjobs.errors import ThumbnailError


def decode_image(data: bytes) -> Image.Image:
    """An RGB image from PNG/JPEG/WEBP bytes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ThumbnailError(f"The image could not be decoded: {exc}") from exc


def video_middle_frame(data: bytes) -> Image.Image:
    """The frame ``count // 2`` of the first video stream, as an RGB image."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            count = sum(1 for packet in container.demux(stream) if packet.size)
        if count == 0:
            raise ThumbnailError("The video has no frames")
        middle = count // 2
        with av.open(io.BytesIO(data), mode="r") as container:
            for number, frame in enumerate(container.decode(video=0)):
                if number == middle:
                    return frame.to_image().convert("RGB")
    except (av.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise ThumbnailError(f"The video could not be decoded: {exc}") from exc
    raise ThumbnailError(f"The video decoded fewer frames than its {count} packets")


def make_thumbnail(data: bytes, is_video: bool) -> bytes:
    """WEBP thumbnail bytes (longest edge 256, quality 85) for an image or a video."""
    picture = video_middle_frame(data) if is_video else decode_image(data)
    webp, _width, _height = encode_thumbnail(picture)
    return webp
