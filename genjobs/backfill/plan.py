"""Inventory of the legacy buckets and the copy plan built from it (pure, no I/O).

The plan maps every listed legacy object onto its contract path in the target bucket
(``{user_id}/{job_id}/{index}.{ext}`` plus the ``{index}.thumb.webp`` sibling). Sources that map
onto the same asset (same user, job and index) form a collision group: none of them is copied
before their bytes are compared (identical bytes are one asset; different bytes are a conflict
to resolve by hand), so nothing is ever overwritten silently.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from genjobs.backfill.legacy_paths import (
    LegacyObject,
    Unmappable,
    VideoJobLookup,
    parse_legacy_path,
)
from genjobs.storage.base import ObjectInfo


def source_key(bucket: str, path: str) -> str:
    """``{bucket}/{path}``: how the manifest names a source object."""
    return f"{bucket}/{path}"


@dataclass(frozen=True)
class BucketInventory:
    """What listing one legacy bucket found.

    Attributes:
        bucket: The bucket.
        objects: Every object listed (folders excluded), sorted by path.
        missing: The bucket does not exist (storage answered 404).
        error: Why listing failed otherwise (the bucket is then skipped, never guessed at).
    """

    bucket: str
    objects: tuple[ObjectInfo, ...] = ()
    missing: bool = False
    error: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(info.size for info in self.objects)


@dataclass(frozen=True)
class PlannedCopy:
    """One source object and where it goes."""

    source: LegacyObject
    target_bucket: str
    size: int
    listed_content_type: str | None = None
    created_at: datetime | None = None

    @property
    def key(self) -> str:
        return source_key(self.source.bucket, self.source.path)

    @property
    def target_path(self) -> str:
        return self.source.target_path

    @property
    def thumbnail_path(self) -> str:
        return self.source.thumbnail_path


@dataclass
class BackfillPlan:
    """The whole plan of one run.

    Attributes:
        target_bucket: Where copies go.
        copies: Sources whose asset no other source maps onto, in bucket and path order.
        collision_groups: Sources that map onto the same asset, grouped, each group sorted.
        unmappable: Objects that cannot be placed (folder entries excluded).
        folder_entries: How many folder entries were ignored.
        outside_window: How many objects fell outside ``since``/``until`` (or had no date
            while a window was set).
        inventories: The listing of each bucket, in the order they were given.
    """

    target_bucket: str
    copies: list[PlannedCopy] = field(default_factory=list)
    collision_groups: list[list[PlannedCopy]] = field(default_factory=list)
    unmappable: list[Unmappable] = field(default_factory=list)
    folder_entries: int = 0
    outside_window: int = 0
    inventories: list[BucketInventory] = field(default_factory=list)

    @property
    def mapped(self) -> list[PlannedCopy]:
        """Every mappable source: singles and collision members."""
        return self.copies + [item for group in self.collision_groups for item in group]

    @property
    def missing_buckets(self) -> list[str]:
        return [inv.bucket for inv in self.inventories if inv.missing]

    @property
    def failed_buckets(self) -> dict[str, str]:
        return {inv.bucket: inv.error for inv in self.inventories if inv.error is not None}

    @property
    def listed_objects(self) -> int:
        return sum(len(inv.objects) for inv in self.inventories)


def in_window(created_at: datetime | None, since: datetime | None, until: datetime | None) -> bool:
    """``since <= created_at < until``; an undated object is inside only when no window is set."""
    if since is None and until is None:
        return True
    if created_at is None:
        return False
    if since is not None and created_at < since:
        return False
    return until is None or created_at < until


def build_plan(
    inventories: Iterable[BucketInventory],
    target_bucket: str,
    video_lookup: VideoJobLookup | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> BackfillPlan:
    """Parse every listed object and plan its copy.

    Args:
        inventories: One listing per legacy bucket.
        target_bucket: The bucket copies go to.
        video_lookup: Resolves legacy ``video_id`` names (see :mod:`legacy_paths`).
        since: Only objects created at or after this moment (timezone-aware).
        until: Only objects created before this moment.

    Returns:
        The plan; sources are visited in inventory order, then path order.
    """
    plan = BackfillPlan(target_bucket=target_bucket)
    by_asset: dict[tuple[str, str, int], list[PlannedCopy]] = defaultdict(list)
    for inventory in inventories:
        plan.inventories.append(inventory)
        for info in inventory.objects:
            if not in_window(info.created_at, since, until):
                plan.outside_window += 1
                continue
            parsed = parse_legacy_path(inventory.bucket, info.path, video_lookup)
            if isinstance(parsed, Unmappable):
                if parsed.is_folder:
                    plan.folder_entries += 1
                else:
                    plan.unmappable.append(parsed)
                continue
            by_asset[parsed.asset_key].append(
                PlannedCopy(
                    source=parsed,
                    target_bucket=target_bucket,
                    size=info.size,
                    listed_content_type=info.content_type,
                    created_at=info.created_at,
                )
            )
    for group in by_asset.values():
        if len(group) == 1:
            plan.copies.append(group[0])
        else:
            plan.collision_groups.append(group)
    return plan


def batched(items: list[PlannedCopy], size: int) -> list[list[PlannedCopy]]:
    """Consecutive slices of at most ``size`` items."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]
