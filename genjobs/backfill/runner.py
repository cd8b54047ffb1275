"""One real backfill run: everything between the plan and the report, batch by batch.

For each batch the target folders are listed first; a source whose manifest state is verified
and whose target is still there with the recorded size and MD5 ETag is skipped. Every other
source gets a ``started`` record (saying whether its target and thumbnail already existed)
before anything is written, then the batch is copied in one task; sources that hit a transient
error are retried one by one in their own tasks. Each outcome lands in the manifest as it comes
back. With a database, the verified copies of each batch are then recorded in
``public.backfilled_objects``, and only recorded sources may be removed.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger

from genjobs.backfill.manifest import (
    EntryState,
    Manifest,
    ManifestRecord,
    ManifestWriter,
    Outcome,
)
from genjobs.backfill.plan import BackfillPlan, PlannedCopy
from genjobs.backfill.steps import (
    copy_batch,
    copy_object,
    fingerprint_sources,
    probe_target,
    probe_targets,
    record_backfilled_copies,
    remove_objects,
)
from genjobs.backfill.transfer import CopyOrder, CopyOutcome, Fingerprint, Listing, job_prefix_of
from genjobs.db.backfilled_objects import BackfilledCopy
from genjobs.settings import Settings
from genjobs.storage.base import ObjectInfo
from tasks.retries import database_policy, storage_policy, with_retries

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")

Duplicate = tuple[PlannedCopy, PlannedCopy, Fingerprint | None]
"""``(duplicate source, the source copied instead, the duplicate's fingerprint if read)``."""


@dataclass
class TargetProber:
    """Lists target folders in one task, then retries each folder that failed in its own."""

    batch_task: Any
    single_task: Any
    concurrency: int

    @classmethod
    def from_settings(cls, settings: Settings, concurrency: int) -> TargetProber:
        return cls(
            with_retries(probe_targets, storage_policy(settings)),
            with_retries(probe_target, storage_policy(settings)),
            concurrency,
        )

    async def __call__(
        self, bucket: str, prefixes: list[str]
    ) -> tuple[dict[str, ObjectInfo], dict[str, str]]:
        """Objects found, by path, and the folders still unlisted (folder -> error)."""
        listing: Listing = await self.batch_task(bucket, prefixes, self.concurrency)
        found = dict(listing.found)
        unknown: dict[str, str] = {}
        semaphore = asyncio.Semaphore(self.concurrency)

        async def again(prefix: str) -> None:
            async with semaphore:
                try:
                    found.update(await self.single_task(bucket, prefix))
                except Exception as exc:
                    unknown[prefix] = str(exc)

        await asyncio.gather(*(again(prefix) for prefix in listing.failed))
        return found, unknown


def record_for(item: PlannedCopy, outcome: Outcome, **fields: Any) -> ManifestRecord:
    """A manifest record about one planned source."""
    return ManifestRecord(
        outcome=outcome,
        source_bucket=item.source.bucket,
        source_path=item.source.path,
        target_bucket=item.target_bucket,
        target_path=fields.pop("target_path", item.target_path),
        **fields,
    )


def _fingerprint_fields(printed: Fingerprint | None) -> dict[str, Any]:
    if printed is None:
        return {}
    return {"size": printed.size, "sha256": printed.sha256, "md5": printed.md5}


def verified_earlier(
    state: EntryState | None,
    item: PlannedCopy,
    target: ObjectInfo | None,
    thumbnail: ObjectInfo | None,
) -> bool:
    """The manifest says this source was verified and its target is still there, unchanged.

    Unchanged means the listed size and MD5 ETag match the recorded ones. Where the store
    reports no plain MD5 ETag the source goes round again, and the copy step compares the
    target's bytes (it never overwrites a verified copy's target). A missing thumbnail sends
    the source round again unless its bytes could not be decoded.
    """
    if state is None or not state.verified or target is None:
        return False
    if (state.target_bucket, state.target_path) != (item.target_bucket, item.target_path):
        return False
    if target.size != state.size:
        return False
    if not (target.etag and state.md5 and _MD5_HEX.match(target.etag)):
        return False
    if target.etag != state.md5:
        return False
    return thumbnail is not None or state.thumbnail_undecodable


@dataclass
class BackfillRun:
    """What one real backfill run shares between its batches, and what it has done so far."""

    plan: BackfillPlan
    writer: ManifestWriter
    settings: Settings
    concurrency: int
    max_objects_per_second: float | None
    cross_bucket_server_copy: bool
    dsn: str | None = None
    records: list[ManifestRecord] = field(default_factory=list)
    verified_earlier: int = 0
    created_objects: int = 0
    bytes_copied: int = 0
    sources_removed: int = 0
    copies_recorded: int = 0

    def __post_init__(self) -> None:
        self.prober = TargetProber.from_settings(self.settings, self.concurrency)
        self.copy_task = with_retries(copy_batch, storage_policy(self.settings))
        self.retry_task = with_retries(copy_object, storage_policy(self.settings))
        self.remove_task = with_retries(remove_objects, storage_policy(self.settings))
        self.fingerprint_task = with_retries(fingerprint_sources, storage_policy(self.settings))
        self.record_task = with_retries(record_backfilled_copies, database_policy(self.settings))

    @property
    def manifest(self) -> Manifest:
        return self.writer.manifest

    def append(self, record: ManifestRecord) -> ManifestRecord:
        written = self.writer.append(record)
        if record.outcome != "started":
            self.records.append(written)
        return written

    def server_copy_for(self, item: PlannedCopy) -> bool:
        """Let the server copy when it can, and when that keeps the right content type."""
        same_bucket = item.source.bucket == item.target_bucket
        if not (same_bucket or self.cross_bucket_server_copy):
            return False
        return item.listed_content_type == item.source.content_type

    # Before the batches

    def record_unmappable(self) -> None:
        """One ``unmappable`` record per misfit (again only when the reason changed)."""
        for entry in self.plan.unmappable:
            detail = f"{entry.reason}: {entry.detail}"
            state = self.manifest.state(f"{entry.bucket}/{entry.path}")
            if state is not None and state.outcome == "unmappable" and state.detail == detail:
                continue
            self.append(
                ManifestRecord(
                    outcome="unmappable",
                    source_bucket=entry.bucket,
                    source_path=entry.path,
                    detail=detail,
                )
            )

    async def resolve_collisions(self) -> tuple[list[PlannedCopy], list[Duplicate]]:
        """Compare the bytes of sources that map onto one asset.

        Returns:
            The one source to copy per group of identical sources, and the others as
            duplicates. Groups whose sources differ are recorded as ``collision`` and copy
            nothing. Groups verified by an earlier run are not read again.
        """
        primaries: list[PlannedCopy] = []
        duplicates: list[Duplicate] = []
        open_groups: list[list[PlannedCopy]] = []
        for group in self.plan.collision_groups:
            states = [self.manifest.state(item.key) for item in group]
            if all(s is not None and s.verified for s in states):
                copied = [
                    i for i, s in zip(group, states, strict=True) if s and s.outcome != "duplicate"
                ]
                primary = copied[0] if copied else group[0]
                primaries.append(primary)
                duplicates += [(item, primary, None) for item in group if item is not primary]
            else:
                open_groups.append(group)
        flat = [item for group in open_groups for item in group]
        prints: list[Fingerprint | None] = await self.fingerprint_task(flat) if flat else []
        by_key = {item.key: printed for item, printed in zip(flat, prints, strict=True)}
        for group in open_groups:
            group_prints = [by_key[item.key] for item in group]
            shas = {p.sha256 if p is not None else None for p in group_prints}
            if None not in shas and len(shas) == 1 and len({i.source.ext for i in group}) == 1:
                primaries.append(group[0])
                duplicates += [(item, group[0], by_key[item.key]) for item in group[1:]]
                continue
            sizes = {key: f"{p.size} B" if p else "gone" for key, p in by_key.items()}
            for item, printed in zip(group, group_prints, strict=True):
                others = ", ".join(f"{o.key} ({sizes[o.key]})" for o in group if o is not item)
                self.append(
                    record_for(
                        item,
                        "collision",
                        detail=f"maps onto the same asset as {others}; not copied",
                        **_fingerprint_fields(printed),
                    )
                )
        return primaries, duplicates

    # One batch

    async def copy_batch(self, number: int, batch: list[PlannedCopy]) -> None:
        """Probe the batch's targets, record what starts, copy, and record every outcome."""
        prefixes = sorted({job_prefix_of(item) for item in batch})
        found, unknown = await self.prober(self.plan.target_bucket, prefixes)
        orders = []
        for item in batch:
            error = unknown.get(job_prefix_of(item))
            if error is not None:
                self.append(
                    record_for(item, "failed", detail=f"the target could not be listed: {error}")
                )
            elif (order := self._order(item, found)) is not None:
                orders.append(order)
        if not orders:
            return
        try:
            outcomes: list[CopyOutcome] = await self.copy_task(
                number,
                orders,
                self.plan.target_bucket,
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
            self._record_outcome(order.item, outcome)

    def _order(self, item: PlannedCopy, found: dict[str, ObjectInfo]) -> CopyOrder | None:
        """The copy order for one source, its ``started`` record written; None if done before."""
        state = self.manifest.state(item.key)
        target = found.get(item.target_path)
        thumbnail = found.get(item.thumbnail_path)
        if verified_earlier(state, item, target, thumbnail):
            self.verified_earlier += 1
            return None
        ours_target = state is not None and state.owns_target
        ours_thumbnail = state is not None and state.owns_thumbnail
        order = CopyOrder(
            item=item,
            target_preexisting=target is not None and not ours_target,
            thumbnail_preexisting=thumbnail is not None and not ours_thumbnail,
            server_copy=self.server_copy_for(item),
            verified_before=state is not None and state.verified_once,
        )
        self.append(
            record_for(
                item,
                "started",
                thumbnail_path=item.thumbnail_path,
                target_preexisting=order.target_preexisting,
                thumbnail_preexisting=order.thumbnail_preexisting,
            )
        )
        return order

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
                    result: CopyOutcome = await self.retry_task(order)
                    return result
                except Exception as exc:
                    return CopyOutcome(key=order.item.key, outcome="failed", detail=str(exc))

        pairs = zip(orders, outcomes, strict=True)
        return list(await asyncio.gather(*(again(order, outcome) for order, outcome in pairs)))

    def _record_outcome(self, item: PlannedCopy, outcome: CopyOutcome) -> None:
        if outcome.server_copy_refused:
            self.cross_bucket_server_copy = False
        if outcome.written:
            self.created_objects += 1
            self.bytes_copied += outcome.fingerprint.size if outcome.fingerprint else 0
        self.created_objects += int(outcome.thumbnail_written)
        verified = outcome.outcome in ("copied", "already_present")
        self.append(
            record_for(
                item,
                outcome.outcome,
                thumbnail_path=outcome.thumbnail_path if verified else None,
                content_type=item.source.content_type if verified else None,
                method=outcome.method,
                created_target=outcome.created_target,
                created_thumbnail=outcome.created_thumbnail,
                thumbnail_undecodable=outcome.thumbnail_undecodable,
                thumbnail_sha256=outcome.thumbnail_sha256,
                detail=outcome.detail,
                **_fingerprint_fields(outcome.fingerprint),
            )
        )

    # After the batches

    def record_duplicates(self, duplicates: list[Duplicate]) -> list[PlannedCopy]:
        """Record sources identical to a copied one; returns those now verified."""
        verified: list[PlannedCopy] = []
        for item, primary, printed in duplicates:
            primary_state = self.manifest.state(primary.key)
            state = self.manifest.state(item.key)
            if primary_state is None or not primary_state.verified:
                outcome: Outcome = "failed"
                if primary_state is not None and primary_state.outcome in ("conflict", "refused"):
                    outcome = primary_state.outcome
                self.append(
                    record_for(
                        item,
                        outcome,
                        target_path=primary.target_path,
                        detail=f"its identical source {primary.key} was not copied",
                    )
                )
                continue
            if printed is not None or state is None or state.outcome != "duplicate":
                self.append(
                    record_for(
                        item,
                        "duplicate",
                        target_path=primary.target_path,
                        thumbnail_path=primary_state.thumbnail_path,
                        size=printed.size if printed else primary_state.size,
                        sha256=printed.sha256 if printed else primary_state.sha256,
                        md5=printed.md5 if printed else primary_state.md5,
                        detail=f"the same bytes as {primary.key}, which was copied",
                    )
                )
            verified.append(item)
        return verified

    def _backfilled_copy(self, item: PlannedCopy) -> BackfilledCopy | None:
        state = self.manifest.state(item.key)
        if state is None or not state.verified or state.source_removed:
            return None
        if None in (state.target_bucket, state.target_path, state.sha256, state.size):
            return None
        return BackfilledCopy(
            source_bucket=item.source.bucket,
            source_path=item.source.path,
            target_bucket=str(state.target_bucket),
            target_path=str(state.target_path),
            thumbnail_path=state.thumbnail_path,
            sha256=str(state.sha256),
            size=int(state.size or 0),
        )

    async def record_copies(self, items: list[PlannedCopy]) -> set[str]:
        """Record every verified copy of these sources in ``public.backfilled_objects``.

        Returns the keys of the sources recorded (none without a database). A failure raises:
        the sources stay, and a later run records them again.
        """
        if self.dsn is None:
            return set()
        copies = {item.key: c for item in items if (c := self._backfilled_copy(item)) is not None}
        if copies:
            await self.record_task(self.dsn, list(copies.values()))
            self.copies_recorded += len(copies)
        return set(copies)

    async def remove_sources(self, items: list[PlannedCopy], recorded: set[str]) -> None:
        """Delete verified sources whose copy is recorded (never anything else)."""
        by_bucket: dict[str, list[PlannedCopy]] = defaultdict(list)
        for item in items:
            state = self.manifest.state(item.key)
            if item.key not in recorded or state is None:
                continue
            if state.verified and not state.source_removed:
                by_bucket[item.source.bucket].append(item)
        for bucket, bucket_items in by_bucket.items():
            try:
                paths = [item.source.path for item in bucket_items]
                removed = set(await self.remove_task(bucket, paths))
            except Exception as exc:
                get_run_logger().warning(
                    "Sources in %s were not removed (%s); a later run with delete_sources "
                    "removes them.",
                    bucket,
                    exc,
                )
                continue
            for item in bucket_items:
                if item.source.path in removed:
                    self.append(record_for(item, "source_removed"))
                    self.sources_removed += 1
