"""The backfill lists the next batch's target folders while a batch copies (on a real Prefect API
and the real storage server, a batch held up at the network seam), a run that stops starts
nothing of the next batch, and a listing still under way when its caller stops runs to its end
(its task run is not left Running)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from pydantic import SecretStr

from flows.backfill import backfill_legacy_buckets
from genjobs.settings import Settings
from tasks.backfill_run import BackfillSteps, Probed
from tests.backfill.conftest import (
    TARGET,
    LegacySeed,
    SeededStorage,
    final_state,
    installed_settings,
    png_bytes,
    records,
    seed_uuid,
    target_bucket_objects,
)

HOLD_SECONDS = 2.0
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}


async def task_runs(state: Any, prefix: str) -> list[Any]:
    """The flow run's task runs whose key starts with ``prefix``, by start time."""
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    found = [run for run in runs if run.task_key.startswith(prefix) and run.start_time]
    return sorted(found, key=lambda run: run.start_time)


async def settled_task_runs(state: Any, prefix: str, count: int) -> list[Any]:
    """:func:`task_runs` once there are ``count`` of them and none is still unfinished, or as
    they are after 20 s."""
    deadline = time.monotonic() + 20
    while True:
        runs = await task_runs(state, prefix)
        settled = len(runs) == count and all(run.state_type in FINAL for run in runs)
        if settled or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(0.2)


@pytest.mark.usefixtures("prefect_api")
async def test_the_next_batch_is_listed_while_a_batch_copies(
    seeded: SeededStorage, backfill_settings: Settings, legacy_seed: LegacySeed, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    # The first thumbnail holds its batch up for two seconds.
    held = seeded.proxy.stall(
        rf"^POST /storage/v1/object/{TARGET}/.*thumb\.webp",
        after_bytes=1,
        seconds=HOLD_SECONDS,
        times=1,
    )

    state = await final_state(
        backfill_legacy_buckets, dry_run=False, manifest_path=str(manifest), batch_size=40
    )

    summary = await state.result()
    assert held.hits == 1
    assert summary.outcomes.get("failed", 0) == 0
    assert summary.created_objects == len(legacy_seed.created_targets()) + len(
        legacy_seed.created_thumbnails()
    )
    # Every source was started once, and every copy landed.
    started = [(r["source_bucket"], r["source_path"]) for r in records(manifest) if is_start(r)]
    assert len(started) == len(set(started))
    batches = -(-len(started) // 40)
    copies = await settled_task_runs(state, "copy_batch", count=batches)
    probes = await settled_task_runs(state, "probe_targets", count=batches)
    assert batches >= 4 and len(copies) == len(probes) == batches
    first_copy = copies[0]
    assert first_copy.total_run_time.total_seconds() >= HOLD_SECONDS
    # The second batch's folders were listed while the first batch was held.
    assert first_copy.start_time <= probes[1].start_time < first_copy.end_time
    copied = {(o.bucket, o.path) for o in legacy_seed.by_outcome("copied")}
    assert copied <= set(started)
    assert set(legacy_seed.created_targets()) <= set(target_bucket_objects(seeded))


def is_start(record: dict[str, Any]) -> bool:
    return bool(record["outcome"] == "started")


def legacy_png(number: int) -> bytes:
    return png_bytes(number, (40, 30))


@pytest.mark.usefixtures("prefect_api")
async def test_a_run_that_stops_starts_nothing_of_the_next_batch(
    seeded_storage: SeededStorage, own_db: str, tmp_path: Path
) -> None:
    # Three legacy images, one batch each. The project database has lost its
    # backfilled_objects table, so the first batch's record fails and the run stops, with the
    # next batch's listing started ahead.
    paths = [
        f"{seed_uuid('user', n)}/sdxl_{seed_uuid('job', n)}_1754550000_1.png" for n in range(3)
    ]
    for number, path in enumerate(paths):
        seeded_storage.put_object("sdxl_image_fast", path, legacy_png(number), "image/png")
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute("drop table public.backfilled_objects cascade")
    manifest = tmp_path / "manifest.jsonl"
    with installed_settings(
        seeded_storage,
        tmp_path / "home",
        database_dsn=SecretStr(own_db),
        database_retries=0,
    ):
        state = await final_state(
            backfill_legacy_buckets,
            dry_run=False,
            buckets=["sdxl_image_fast"],
            manifest_path=str(manifest),
            batch_size=1,
        )

    assert state.is_failed()
    started = [r for r in records(manifest) if r["outcome"] == "started"]
    assert [r["source_path"] for r in started] == [started[0]["source_path"]]
    first = started[0]
    # Only the first batch's asset and thumbnail were written.
    assert set(target_bucket_objects(seeded_storage)) == {
        first["target_path"],
        first["thumbnail_path"],
    }
    # The first batch's listing and the next one's, started ahead: both end in a final state
    # (the server records task-run states from their events, a moment later).
    probes = await settled_task_runs(state, "probe_targets", count=2)
    assert [run.state_type for run in probes] == [StateType.COMPLETED, StateType.COMPLETED]


class HeldProbes(BackfillSteps):
    """Steps whose listings of the target folders wait until released (the network seam of the
    listing is not what this checks: the order of the steps is)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.probed: list[str] = []
        self.finished: list[str] = []

    async def probe(self, batch: list[Any]) -> Probed:
        name = batch[0]
        self.probed.append(name)
        if name != "b1":
            await self.release.wait()
        self.finished.append(name)
        return {name: None}, {}  # type: ignore[dict-item]


async def test_each_batch_comes_with_its_own_probe_and_the_next_one_is_under_way() -> None:
    steps = HeldProbes()
    seen: list[tuple[int, str, object]] = []
    async with contextlib.aclosing(steps.probed_ahead([["b1"], ["b2"], ["b3"]])) as batches:
        async for number, batch, (found, _) in batches:
            seen.append((number, batch[0], sorted(found)))
            await asyncio.sleep(0)
            assert steps.probed[-1] == f"b{number + 1}" or number == 3
            steps.release.set()
    assert seen == [(1, "b1", ["b1"]), (2, "b2", ["b2"]), (3, "b3", ["b3"])]
    assert steps.finished == ["b1", "b2", "b3"]


async def test_a_caller_that_stops_waits_for_the_probe_under_way() -> None:
    # A cancelled probe would leave its task run Running for ever: it runs to its end instead.
    steps = HeldProbes()
    loop = asyncio.get_running_loop()
    with pytest.raises(RuntimeError, match="stopped"):
        async with contextlib.aclosing(steps.probed_ahead([["b1"], ["b2"]])) as batches:
            async for _number, _batch, _probed in batches:
                await asyncio.sleep(0)
                loop.call_later(0.05, steps.release.set)
                raise RuntimeError("stopped")
    assert steps.probed == ["b1", "b2"] and steps.finished == ["b1", "b2"]


async def test_a_probe_that_failed_ahead_is_collected_when_its_caller_stops() -> None:
    class FailingAhead(HeldProbes):
        async def probe(self, batch: list[Any]) -> Probed:
            if batch[0] == "b2":
                raise RuntimeError("the listing failed")
            return await super().probe(batch)

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        with pytest.raises(ValueError, match="stopped"):
            async with contextlib.aclosing(
                FailingAhead().probed_ahead([["b1"], ["b2"]])
            ) as batches:
                async for _number, _batch, _probed in batches:
                    await asyncio.sleep(0.01)  # the probe ahead fails meanwhile
                    raise ValueError("stopped")
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    # The failed probe's error was taken: no "Task exception was never retrieved".
    assert reported == []
