"""Encode rendered frames into PNG or MP4 files plus WEBP thumbnails, with facts read back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from genjobs.assets import EncodedAsset, RenderedBatch
from genjobs.encode.images import encode_images, encode_thumbnail, to_image
from genjobs.storage.base import MIME_BY_EXTENSION
from tasks.naming import run_name


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _encode_video(
    batch: RenderedBatch, index: int, frames: np.ndarray, folder: Path
) -> EncodedAsset:
    from genjobs.encode.video import encode_mp4, middle_frame, probe_mp4

    assert batch.plan.fps is not None
    data = encode_mp4(frames, batch.plan.fps)
    facts = probe_mp4(data)
    thumb, _, _ = encode_thumbnail(to_image(middle_frame(frames)))
    return EncodedAsset(
        index=index,
        kind="video",
        file=_write(folder / f"{index}.mp4", data),
        content_type=MIME_BY_EXTENSION["mp4"],
        extension="mp4",
        size=len(data),
        width=facts.width,
        height=facts.height,
        thumbnail_file=_write(folder / f"{index}.thumb.webp", thumb),
        duration_seconds=facts.duration_seconds,
        frame_count=facts.frame_count,
        fps=facts.fps,
    )


@task(name="encode", task_run_name=run_name("encode"), cache_policy=NO_CACHE)
async def encode_assets(batch: RenderedBatch, png_compress_level: int) -> list[EncodedAsset]:
    """PNG (low compression, parallel threads) or H.264 MP4, and a 256 px WEBP thumbnail each.
    ``png_compress_level`` is the zlib level of the PNGs (0-9).

    The encoding runs in a thread, so the flow's event loop stays free meanwhile.
    """
    encoded = await asyncio.to_thread(_encode, batch, png_compress_level)
    get_run_logger().info(
        "Encoded %d asset(s) for job %s (%d bytes in all).",
        len(encoded),
        batch.plan.job_id,
        sum(a.size for a in encoded),
    )
    return encoded


def _encode(batch: RenderedBatch, png_compress_level: int) -> list[EncodedAsset]:
    folder = Path(batch.frame_files[0]).parent.parent / "encoded"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = [np.load(path, allow_pickle=False) for path in batch.frame_files]
    if batch.plan.output == "video":
        encoded = [_encode_video(batch, i, frames, folder) for i, frames in enumerate(arrays)]
    else:
        images = encode_images(arrays, compress_level=png_compress_level)
        encoded = [
            EncodedAsset(
                index=i,
                kind="image",
                file=_write(folder / f"{i}.png", image.png),
                content_type=MIME_BY_EXTENSION["png"],
                extension="png",
                size=len(image.png),
                width=image.width,
                height=image.height,
                thumbnail_file=_write(folder / f"{i}.thumb.webp", image.thumbnail),
            )
            for i, image in enumerate(images)
        ]
    return encoded
