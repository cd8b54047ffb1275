"""MP4 encoding of rendered frames, and the facts read back from the encoded file.

Frames are piped as raw RGB to the ffmpeg binary bundled with ``imageio-ffmpeg`` (driven through
``ffmpeg-python``) and encoded as H.264 (libx264), ``yuv420p``, without audio. The ``moov`` box
is moved to the front (``+faststart``) so a browser can start playing before the whole file has
arrived; that needs a seekable output, so ffmpeg writes a temporary file. Facts (frame count,
frame rate, duration, size, codec) are read back from the bytes with PyAV, never guessed.
"""

from __future__ import annotations

import io
import logging
import struct
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from genjobs.errors import ErrorCode, JobError

logger = logging.getLogger(__name__)

VIDEO_CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
DEFAULT_CRF = 18
"""Visually near-lossless; 81 frames of 480x832 stay within a few MB for real content."""
DEFAULT_PRESET = "medium"
STDERR_TAIL_CHARS = 2000


@dataclass(frozen=True)
class VideoFacts:
    """What an encoded video really holds, read back from its bytes."""

    frame_count: int
    fps: float
    duration_seconds: float
    width: int
    height: int
    codec: str
    pixel_format: str


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    count, height, width, _ = frames.shape
    if count < 1 or height < 2 or width < 2:
        raise ValueError(f"expected at least one frame of at least 2x2 pixels, got {frames.shape}")
    if height % 2 or width % 2:
        raise ValueError(f"{PIXEL_FORMAT} needs even frame sizes, got {width}x{height}")


def encode_mp4(
    frames: np.ndarray, fps: int, *, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET
) -> bytes:
    """Encode frames as an H.264 MP4 with the ``moov`` box first and no audio.

    Args:
        frames: uint8 RGB frames of shape (F, H, W, 3); H and W even.
        fps: Frames per second; the duration is F / fps.
        crf: libx264 constant rate factor (lower is better quality, larger files).
        preset: libx264 speed preset.

    Returns:
        The MP4 file's bytes.

    Raises:
        ValueError: The frames are not (F, H, W, 3) uint8 with even sizes.
        JobError: ffmpeg failed (code ``ENCODE_ERROR``; the message ends with its stderr).
    """
    import ffmpeg
    import imageio_ffmpeg

    _check_frames(frames)
    count, height, width, _ = frames.shape
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genjobs-mp4-") as folder:
        path = Path(folder) / "video.mp4"
        stream = (
            ffmpeg.input(
                "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps
            )
            .output(
                str(path),
                vcodec=VIDEO_CODEC,
                pix_fmt=PIXEL_FORMAT,
                crf=crf,
                preset=preset,
                movflags="+faststart",
                an=None,
            )
            .global_args("-hide_banner", "-loglevel", "error")
            .overwrite_output()
        )
        try:
            stream.run(
                cmd=imageio_ffmpeg.get_ffmpeg_exe(),
                input=np.ascontiguousarray(frames).tobytes(),
                capture_stdout=True,
                capture_stderr=True,
            )
        except ffmpeg.Error as exc:
            tail = (exc.stderr or b"").decode("utf-8", "replace").strip()[-STDERR_TAIL_CHARS:]
            raise JobError(
                f"ffmpeg could not encode {count} frames of {width}x{height} at {fps} fps: "
                f"{tail or 'no error output'}",
                code=ErrorCode.ENCODE_ERROR,
            ) from exc
        except OSError as exc:
            raise JobError(f"ffmpeg could not be run: {exc}", code=ErrorCode.ENCODE_ERROR) from exc
        data = path.read_bytes()
    logger.info(
        "Encoded %s frames of %sx%s at %s fps into %s bytes of MP4 in %.2f s.",
        count,
        width,
        height,
        fps,
        len(data),
        time.perf_counter() - started,
    )
    return data


def probe_mp4(data: bytes) -> VideoFacts:
    """Read the facts of an encoded video back from its bytes.

    Raises:
        JobError: The bytes are not a readable video (code ``ENCODE_ERROR``).
    """
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise JobError("The encoded file has no video stream", code=ErrorCode.ENCODE_ERROR)
            stream = container.streams.video[0]
            frame_count = stream.frames or sum(
                1 for packet in container.demux(stream) if packet.size
            )
            rate = Fraction(stream.average_rate or stream.base_rate or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = float(container.duration or 0) / av.time_base
            context = stream.codec_context
            facts = VideoFacts(
                frame_count=int(frame_count),
                fps=int(rate) if rate.denominator == 1 else float(rate),
                duration_seconds=duration,
                width=int(context.width),
                height=int(context.height),
                codec=str(context.name),
                pixel_format=str(context.pix_fmt),
            )
    except av.FFmpegError as exc:
        raise JobError(
            f"The encoded video could not be read: {exc}", code=ErrorCode.ENCODE_ERROR
        ) from exc
    return facts


def middle_frame(frames: np.ndarray) -> np.ndarray:
    """The frame at index ``len(frames) // 2`` (the poster frame: 40 of 81)."""
    if len(frames) == 0:
        raise ValueError("a video needs at least one frame")
    return np.asarray(frames[len(frames) // 2])


def top_level_boxes(data: bytes) -> list[str]:
    """The types of an MP4 file's top-level boxes, in file order (``ftyp``, ``moov``, ...)."""
    boxes: list[str] = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            if offset + 16 > len(data):
                break
            (size,) = struct.unpack(">Q", data[offset + 8 : offset + 16])
        elif size == 0:
            size = len(data) - offset
        if size < 8:
            break
        boxes.append(kind.decode("latin-1"))
        offset += size
    return boxes
