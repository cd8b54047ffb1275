"""MP4 encoding with the real bundled ffmpeg, read back with PyAV."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from genjobs.encode.video import (
    VideoFacts,
    encode_mp4,
    middle_frame,
    probe_mp4,
    top_level_boxes,
)
from genjobs.errors import JobError

FRAMES, HEIGHT, WIDTH, FPS = 81, 832, 480, 16


def moving_gradient(count: int, height: int, width: int) -> np.ndarray:
    """Smooth RGB gradients that shift with the frame index (easy to compare after H.264)."""
    t = np.arange(count)[:, None, None, None]
    y = np.arange(height)[None, :, None, None]
    x = np.arange(width)[None, None, :, None]
    channel = np.arange(3)[None, None, None, :]
    return ((x // 2 + y // 4 + 3 * t + 80 * channel) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return moving_gradient(FRAMES, HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def mp4(frames: np.ndarray) -> bytes:
    return encode_mp4(frames, FPS)


def test_wan_video_encodes_to_81_frames_at_16_fps(mp4: bytes) -> None:
    assert probe_mp4(mp4) == VideoFacts(
        frame_count=81,
        fps=16,
        duration_seconds=5.0625,
        width=480,
        height=832,
        codec="h264",
        pixel_format="yuv420p",
    )


def test_the_file_is_faststart_h264_without_audio(mp4: bytes) -> None:
    boxes = top_level_boxes(mp4)

    assert boxes[0] == "ftyp"
    assert boxes.index("moov") < boxes.index("mdat")
    with av.open(io.BytesIO(mp4), mode="r") as container:
        assert not container.streams.audio
        (stream,) = container.streams.video
        assert stream.codec_context.name == "h264"


def test_every_frame_decodes_in_order_close_to_its_source(mp4: bytes, frames: np.ndarray) -> None:
    with av.open(io.BytesIO(mp4), mode="r") as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]

    assert len(decoded) == FRAMES
    assert decoded[0].shape == (HEIGHT, WIDTH, 3)
    for index in (0, 40, 80):
        error = np.abs(decoded[index].astype(np.int16) - frames[index].astype(np.int16)).mean()
        assert error < 4.0, (index, error)
    # Frames are in order: frame 40 is nearer its own source than the one after it.
    later = np.abs(decoded[40].astype(np.int16) - frames[41].astype(np.int16)).mean()
    assert later > np.abs(decoded[40].astype(np.int16) - frames[40].astype(np.int16)).mean()


def test_short_clips_report_their_own_duration() -> None:
    facts = probe_mp4(encode_mp4(moving_gradient(9, 48, 64), 16))

    assert (facts.frame_count, facts.width, facts.height) == (9, 64, 48)
    assert facts.duration_seconds == pytest.approx(9 / 16)


def test_middle_frame_is_the_poster_index() -> None:
    stamped = np.arange(81, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)

    assert middle_frame(stamped)[0, 0, 0] == 40
    assert middle_frame(stamped[:2])[0, 0, 0] == 1
    assert middle_frame(stamped[:1])[0, 0, 0] == 0
    with pytest.raises(ValueError):
        middle_frame(stamped[:0])


def test_an_ffmpeg_failure_is_an_encode_error_with_its_output() -> None:
    with pytest.raises(JobError) as caught:
        encode_mp4(moving_gradient(3, 16, 16), FPS, preset="no-such-preset")

    assert type(caught.value) is JobError
    assert caught.value.code == "ENCODE_ERROR" and not caught.value.retryable
    assert "no-such-preset" in caught.value.message


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 15, 16, 3), np.uint8),  # odd height: yuv420p needs even sizes
        np.zeros((3, 16, 16, 3), np.float32),
        np.zeros((16, 16, 3), np.uint8),
        np.zeros((0, 16, 16, 3), np.uint8),
    ],
)
def test_frames_that_cannot_be_encoded_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_mp4(bad, FPS)


def test_unreadable_bytes_are_an_encode_error() -> None:
    with pytest.raises(JobError) as caught:
        probe_mp4(b"\x00\x00\x00\x08free" + b"not a video" * 10)

    assert caught.value.code == "ENCODE_ERROR"
