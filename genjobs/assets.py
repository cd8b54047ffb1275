"""Small typed records that travel between the steps of a job.

They hold paths and facts, never pixels or bytes: frames and encoded files stay in the job's
scratch folder, so Prefect results stay small (see the Prefect notes on result sizes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from genjobs.jobs.plan import RenderPlan


class RenderedBatch(BaseModel):
    """A finished render: one ``.npy`` frame file per asset in the scratch folder."""

    model_config = ConfigDict(frozen=True)

    plan: RenderPlan
    frame_files: tuple[str, ...]
    details: dict[str, Any]
    render_seconds: float


class EncodedAsset(BaseModel):
    """One encoded asset and its thumbnail on local disk, with facts read back from the file."""

    model_config = ConfigDict(frozen=True)

    index: int
    kind: str  # "image" or "video"
    file: str
    content_type: str
    extension: str
    size: int
    width: int
    height: int
    thumbnail_file: str | None
    duration_seconds: float | None = None
    frame_count: int | None = None
    fps: float | None = None


class UploadedAsset(BaseModel):
    """An asset stored at its contract path (and its thumbnail, unless that upload failed)."""

    model_config = ConfigDict(frozen=True)

    encoded: EncodedAsset
    path: str
    thumbnail_path: str | None


def scratch_dir(work_dir: Path, job_id: str) -> Path:
    """The job's private scratch folder (``job_id`` is a validated UUID string)."""
    return Path(work_dir) / job_id
