"""The backfill's batches driven through its tasks, each with the retry policy that governs it.

:class:`TargetProber` lists target folders in one task and retries each folder that failed in
its own. :class:`BackfillSteps` lists each batch's target folders while the batch before copies,
copies a batch in one task (each transiently failed source again in its own retried task),
compares colliding sources, records verified copies in ``public.backfilled_objects`` and removes
recorded sources; what each step decides and records is
:class:`genjobs.backfill.run_state.BackfillRun`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger

from genjobs.backfill.plan import PlannedCopy
from genjobs.backfill.run_state import BackfillRun, Duplicate
from genjobs.backfill.transfer import CopyOrder, CopyOutcome, Fingerprint, Listing, job_prefix_of
from genjobs.settings import Settings
from genjobs.storage.base import ObjectInfo, StorageBackend
from tasks.backfill import (
    copy_batch,
    copy_object,
    fingerprint_sources,
    probe_target,
    probe_targets,
    record_backfilled_copies,
    remove_objects,
)
from tasks.retries import database_policy, storage_policy, with_retries

Probed = tuple[dict[str, ObjectInfo], dict[str, str]]
"""Target objects found, by path, and the folders that could not be listed (folder -> error)."""


@dataclass
class TargetProber:
    """Lists target folders in one task, then retries each folder that failed in its own."""

    storage: StorageBackend
    batch_task: Any
    single_task: Any
    concurrency: int

    @classmethod
    def using(cls, storage: StorageBackend, settings: Settings, concurrency: int) -> TargetProber:
        """Listing ``storage`` under the settings' storage policy."""
        return cls(
            storage,
            with_retries(probe_targets, storage_policy(settings)),
            with_retries(probe_target, storage_policy(settings)),
            concurrency,
        )

    async def __call__(self, bucket: str, prefixes: list[str]) -> Probed:
        """Objects found, by path, and the folders still unlisted (folder -> error)."""
        listing: Listing = await self.batch_task(self.storage, bucket, prefixes, self.concurrency)
        found = dict(listing.found)
        unknown: dict[str, str] = {}
        semaphore = asyncio.Semaphore(self.concurrency)

        async def again(prefix: str) -> None:
            async with semaphore:
                try:
                    found.update(await self.single_task(self.storage, bucket, prefix))
                except Exception as exc:
                    unknown[prefix] = str(exc)

        await asyncio.gather(*(again(prefix) for prefix in listing.failed))
        return found, unknown


class BackfillSteps:
    """The storage and database steps of one real backfill run, recorded in ``run``."""

    def __init__(
        self,
        run: BackfillRun,
        storage: StorageBackend,
        settings: Settings,
        concurrency: int,
        max_objects_per_second: float | None,
        dsn: str | None,
    ) -> None:
        self.run = run
        self.storage = storage
        self.concurrency = concurrency
        self.max_objects_per_second = max_objects_per_second
        self.dsn = dsn
        self.prober = TargetProber.using(storage, settings, concurrency)
        self.copy_task = with_retries(copy_batch, storage_policy(settings))
        self.retry_task = with_retries(copy_object, storage_policy(settings))
        self.remove_task = with_retries(remove_objects, storage_policy(settings))
        self.fingerprint_task = with_retries(fingerprint_sources, storage_policy(settings))
        self.record_task = with_retries(record_backfilled_copies, database_policy(settings))

    async def resolve_collisions(self) -> tuple[list[PlannedCopy], list[Duplicate]]:
        """Compare the bytes of sources that map onto one asset.

        Returns:
            The one source to copy per group of identical sources, and the others as
            duplicates. Groups whose sources differ are recorded as ``collision`` and copy
            nothing. Groups verified by an earlier run are not read again.
        """
        primaries, duplicates, unsettled = self.run.settled_collisions()
        prints: list[Fingerprint | None] = (
            await self.fingerprint_task(self.storage, unsettled) if unsettled else []
        )
        compared, more = self.run.compare_collisions(
            {item.key: printed for item, printed in zip(unsettled, prints, strict=True)}
        )
        return primaries + compared, duplicates + more

    async def probe(self, batch: list[PlannedCopy]) -> Probed:
        """What the batch's target folders hold now: objects found, by path, and the folders
        still unlisted (folder -> error)."""
        prefixes = sorted({job_prefix_of(item) for item in batch})
        return await self.prober(self.run.plan.target_bucket, prefixes)

    async def probed_ahead(
        self, batches: list[list[PlannedCopy]]
    ) -> AsyncGenerator[tuple[int, list[PlannedCopy], Probed], None]:
        """Each batch, numbered from 1, with its probe; the next batch's target folders are
        listed while the caller copies this one, so the storage connections do not wait for
        the listing between batches.

        Sound because no two batches share a target: each planned copy has a target and a
        thumbnail of its own (sources mapping onto one asset are a collision group, resolved
        to one copy), and a batch's orders read only their own paths from its probe. A probe
        that runs while the batch before writes into the same job folder may see those other
        objects; it never misses one that was there before the run. Use it with
        ``contextlib.aclosing``: a probe still running when the caller stops is waited for
        (it only lists), so that its task run ends in a final state rather than Running for
        ever, as a cancelled one would; its result or error is then dropped.
        """
        if not batches:
            return
        ahead = asyncio.ensure_future(self.probe(batches[0]))
        try:
            for number, batch in enumerate(batches, start=1):
                probed = await ahead
                if number < len(batches):
                    ahead = asyncio.ensure_future(self.probe(batches[number]))
                yield number, batch, probed
        finally:
            # The caller stopped, or has this probe's result already.
            with contextlib.suppress(Exception):
                await ahead

    async def copy_batch(self, number: int, batch: list[PlannedCopy], probed: Probed) -> None:
        """Record what starts (given the batch's ``probed`` targets), copy, and record every
        outcome."""
        found, unknown = probed
        orders = self.run.orders_for(batch, found, unknown)
        if not orders:
            return
        try:
            outcomes: list[CopyOutcome] = await self.copy_task(
                self.storage,
                number,
                orders,
                self.run.plan.target_bucket,
                self.concurrency,
                self.max_objects_per_second,
            )
        except Exception as exc:
            get_run_logger().error("Batch %d failed as a whole: %s", number, exc)
            outcomes = [
                CopyOutcome(key=o.item.key, outcome="failed", transient=True, detail=str(exc))
                for o in orders
            ]
        retried = await self._retry_transient(orders, outcomes)
        for order, outcome in zip(orders, retried, strict=True):
            self.run.record_outcome(order.item, outcome)

    async def _retry_transient(
        self, orders: list[CopyOrder], outcomes: list[CopyOutcome]
    ) -> list[CopyOutcome]:
        """Run each transiently failed source again as its own retried task."""
        semaphore = asyncio.Semaphore(self.concurrency)

        async def again(order: CopyOrder, outcome: CopyOutcome) -> CopyOutcome:
            if not outcome.transient:
                return outcome
            async with semaphore:
                try:
                    result: CopyOutcome = await self.retry_task(self.storage, order)
                    return result
                except Exception as exc:
                    return CopyOutcome(key=order.item.key, outcome="failed", detail=str(exc))

        pairs = zip(orders, outcomes, strict=True)
        return list(await asyncio.gather(*(again(order, outcome) for order, outcome in pairs)))

    async def record_copies(self, items: list[PlannedCopy]) -> set[str]:
        """Record every verified copy of these sources in ``public.backfilled_objects``.

        Returns the keys of the sources recorded (none without a database). A failure raises:
        the sources stay, and a later run records them again.
        """
        if self.dsn is None:
            return set()
        copies = self.run.copies_to_record(items)
        if copies:
            await self.record_task(self.dsn, list(copies.values()))
            self.run.copies_recorded += len(copies)
        return set(copies)

    async def remove_sources(self, items: list[PlannedCopy], recorded: set[str]) -> None:
        """Delete verified sources whose copy is recorded (never anything else)."""
        for bucket, bucket_items in self.run.removable_sources(items, recorded).items():
            try:
                paths = [item.source.path for item in bucket_items]
                removed = set(await self.remove_task(self.storage, bucket, paths))
            except Exception as exc:
                get_run_logger().warning(
                    "Sources in %s were not removed (%s); a later run with delete_sources "
                    "removes them.",
                    bucket,
                    exc,
                )
                continue
            self.run.record_removed(bucket_items, removed)
