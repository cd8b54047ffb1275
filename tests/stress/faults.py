"""Helpers for fault-injection tests: Supabase settings on the real storage server behind a fault
proxy, run inspection, checks."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from devstack.storage_proxy import Seen, StorageProxy
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.settings import Settings
from tests.conftest import make_settings
from tests.real_storage import RealStorage

BUCKET = "workspace-temp"
STORAGE_TIMEOUT_SECONDS = 0.5
"""Short, so a hung request costs the test half a second."""
HANG_SECONDS = 1.0
"""How long the proxy holds a hung request before resetting it (past the timeout)."""


def supabase_settings(
    home: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    secret: str,
    real: RealStorage,
    proxy: StorageProxy,
    **overrides: object,
) -> Settings:
    """Settings for SupabaseStorage through the proxy with short timeouts and quick retries."""
    values: dict[str, object] = {
        "supabase_url": proxy.url,
        "supabase_service_key": real.service_key,
        "storage_timeout_seconds": STORAGE_TIMEOUT_SECONDS,
        "storage_retries": 10,
        "storage_retry_base_seconds": 0.05,
        "callback_retry_window_seconds": 20.0,
        "callback_retry_base_seconds": 0.1,
        "callback_retry_cap_seconds": 0.5,
    }
    values.update(overrides)
    return make_settings(home, model_cache, receiver, secret, **values)


async def task_runs(flow_run_id: uuid.UUID) -> dict[str, list[int]]:
    """Attempts (``run_count``) of each task run of a flow run, by task name prefix."""
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    found: dict[str, list[int]] = defaultdict(list)
    for run in runs:
        found[run.name.split("-")[0]].append(run.run_count)
    return dict(found)


def uploads(proxy: StorageProxy, path: str) -> list[Seen]:
    """Every upload request the proxy saw for ``path``, in order (status 0: no answer)."""
    target = f"/storage/v1/object/{BUCKET}/{path}"
    return [seen for seen in proxy.seen() if seen.method == "POST" and seen.path == target]


def job_objects(real: RealStorage, user_id: str, job_id: str) -> list[str]:
    """What the server holds under the job's folder (the bucket is shared), sorted."""
    return real.object_names(BUCKET, prefix=f"{user_id}/{job_id}/")


def contract_paths(user_id: str, job_id: str, count: int) -> list[str]:
    prefix = f"{user_id}/{job_id}"
    return sorted(
        path for i in range(count) for path in (f"{prefix}/{i}.png", f"{prefix}/{i}.thumb.webp")
    )


def check_stored_assets(real: RealStorage, payload: dict[str, Any]) -> None:
    """Each asset of a completed payload is stored once, whole, at its contract path."""
    for index, asset in enumerate(payload["assets"]):
        meta = asset["metadata"]
        assert meta["asset_index"] == index
        original, thumb = (
            httpx.get(
                f"{real.storage_url}/object/authenticated/{BUCKET}/{path}",
                headers=real.headers(),
                timeout=30,
            )
            for path in (asset["url"], asset["thumbnail_url"])
        )
        assert (original.status_code, thumb.status_code) == (200, 200), asset["url"]
        row = real.object_row(BUCKET, asset["url"])
        assert row is not None
        assert row["metadata"]["size"] == meta["file_size_bytes"] == len(original.content)
        content_types = (original.headers["content-type"], thumb.headers["content-type"])
        assert content_types == ("image/png", "image/webp")
        with Image.open(io.BytesIO(original.content)) as image:
            image.load()  # every chunk CRC and the whole zlib stream check out
            assert image.format == "PNG" and image.size == (meta["width"], meta["height"])
        with Image.open(io.BytesIO(thumb.content)) as small:
            small.load()
            assert small.format == "WEBP"


@contextmanager
def receiver_down_until_refused(receiver: CallbackReceiver, refusals: int) -> Iterator[None]:
    """Keep the receiver down (503) until it has refused ``refusals`` requests, then bring it up."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if sum(r.answered == 503 for r in receiver.requests) >= refusals:
                receiver.down_for(0)
                return
            time.sleep(0.01)

    receiver.down_for(3600)
    watcher = threading.Thread(target=watch, name="receiver-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=5)
        receiver.down_for(0)
