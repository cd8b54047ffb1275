"""What one real backfill run has decided and done, kept in its manifest, batch by batch.

For each batch the target folders are listed first (tasks/backfill_run.py); a source whose
manifest state is verified and whose target is still there with the recorded size and MD5 ETag
is skipped. Every other source gets a ``started`` record (saying whether its target and
thumbnail already existed) before anything is written; each copy outcome lands in the manifest
as it comes back. With a database, only the verified copies recorded in
``public.backfilled_objects`` may have their sources removed. Nothing here talks to storage or
the database: the tasks do, and hand their results to :class:`BackfillRun`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from genjobs.backfill.manifest import (
    EntryState,
    Manifest,
    ManifestRecord,
    ManifestWriter,
    Outcome,
)
from genjobs.backfill.plan import BackfillPlan, PlannedCopy
from genjobs.backfill.transfer import CopyOrder, CopyOutcome, Fingerprint, job_prefix_of
from genjobs.db.backfilled_objects import BackfilledCopy
from genjobs.storage.base import ObjectInfo

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")

Duplicate = tuple[PlannedCopy, PlannedCopy, Fingerprint | None]
"""``(duplicate source, the source copied instead, the duplicate's fingerprint if read)``."""


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
    cross_bucket_server_copy: bool
    read_back: bool = False
    """Verify each copy by reading it back (SHA-256), not by its listing: when sources go."""
    records: list[ManifestRecord] = field(default_factory=list)
    verified_earlier: int = 0
    created_objects: int = 0
    bytes_copied: int = 0
    sources_removed: int = 0
    copies_recorded: int = 0

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

    def settled_collisions(self) -> tuple[list[PlannedCopy], list[Duplicate], list[PlannedCopy]]:
        """Groups of sources that map onto one asset, as far as the manifest settles them.

        Returns:
            The source copied per group an earlier run verified, the others of those groups as
            duplicates, and the sources of every other group, whose bytes must be compared
            (:meth:`compare_collisions`).
        """
        primaries: list[PlannedCopy] = []
        duplicates: list[Duplicate] = []
        unsettled: list[PlannedCopy] = []
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
                unsettled += group
        return primaries, duplicates, unsettled

    def compare_collisions(
        self, prints: dict[str, Fingerprint | None]
    ) -> tuple[list[PlannedCopy], list[Duplicate]]:
        """Compare the fingerprints of the unsettled groups' sources (by source key).

        Returns:
            The one source to copy per group of identical sources, and the others as
            duplicates. Groups whose sources differ are recorded as ``collision`` and copy
            nothing.
        """
        primaries: list[PlannedCopy] = []
        duplicates: list[Duplicate] = []
        for group in self.plan.collision_groups:
            if any(item.key not in prints for item in group):
                continue
            group_prints = [prints[item.key] for item in group]
            shas = {p.sha256 if p is not None else None for p in group_prints}
            if None not in shas and len(shas) == 1 and len({i.source.ext for i in group}) == 1:
                primaries.append(group[0])
                duplicates += [(item, group[0], prints[item.key]) for item in group[1:]]
                continue
            sizes = {key: f"{p.size} B" if p else "gone" for key, p in prints.items()}
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

    def orders_for(
        self, batch: list[PlannedCopy], found: dict[str, ObjectInfo], unknown: dict[str, str]
    ) -> list[CopyOrder]:
        """The copy orders of a batch, given what its target folders hold (``found``, by path)
        and which could not be listed (folder -> error); each order's ``started`` record and
        each unlisted source's ``failed`` record written, sources verified earlier left out."""
        orders = []
        for item in batch:
            error = unknown.get(job_prefix_of(item))
            if error is not None:
                self.append(
                    record_for(item, "failed", detail=f"the target could not be listed: {error}")
                )
            elif (order := self._order(item, found)) is not None:
                orders.append(order)
        return orders

    def _order(self, item: PlannedCopy, found: dict[str, ObjectInfo]) -> CopyOrder | None:
        """The copy order for one source, its ``started`` record written; None if done before."""
        state = self.manifest.state(item.key)
        target = found.get(item.target_path)
        thumbnail = found.get(item.thumbnail_path)
        # A run that removes sources verifies every copy again by reading it back.
        if not self.read_back and verified_earlier(state, item, target, thumbnail):
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
            read_back=self.read_back,
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

    def record_outcome(self, item: PlannedCopy, outcome: CopyOutcome) -> None:
        """Count what a copy wrote and record its outcome in the manifest."""
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

    def copies_to_record(self, items: list[PlannedCopy]) -> dict[str, BackfilledCopy]:
        """The verified copies of these sources that ``public.backfilled_objects`` should hold,
        by source key."""
        return {item.key: c for item in items if (c := self._backfilled_copy(item)) is not None}

    def removable_sources(
        self, items: list[PlannedCopy], recorded: set[str]
    ) -> dict[str, list[PlannedCopy]]:
        """Per source bucket, the verified sources whose copy is recorded and that are still
        there (never anything else)."""
        by_bucket: dict[str, list[PlannedCopy]] = defaultdict(list)
        for item in items:
            state = self.manifest.state(item.key)
            if item.key not in recorded or state is None:
                continue
            if state.verified and not state.source_removed:
                by_bucket[item.source.bucket].append(item)
        return dict(by_bucket)

    def record_removed(self, items: list[PlannedCopy], removed: set[str]) -> None:
        """A ``source_removed`` record for each of these sources whose path is in ``removed``."""
        for item in items:
            if item.source.path in removed:
                self.append(record_for(item, "source_removed"))
                self.sources_removed += 1
