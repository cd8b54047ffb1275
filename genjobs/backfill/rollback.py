"""Undoing a backfill: exactly the objects its manifest says it created, with the bytes it wrote.

A source's target (and thumbnail) belongs to the backfill when a record says it created it, or
when an unfinished attempt found no object there before writing. Before one goes, its content
is compared with what the backfill wrote: the target's MD5 ETag against the recorded MD5 where
the store lists one, else the SHA-256 of its downloaded bytes against the recorded SHA-256 (or,
for an attempt that recorded none, the source's); a thumbnail's SHA-256 against the recorded
one (or the thumbnail the source makes). Kept, with the reason: objects whose source the
backfill removed (they are the only copy now), conflicts (other bytes than the backfill wrote:
someone else wrote there), objects whose expected content cannot be told, and objects in
folders that could not be listed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from genjobs.backfill.manifest import EntryState, Manifest, ManifestRecord, ManifestWriter, Outcome
from genjobs.backfill.transfer import ContentCheck
from genjobs.storage.base import ObjectInfo

REMOVE_CHUNK = 100
"""Sources whose objects are removed per request."""


@dataclass
class RollbackEntry:
    """One source's objects: those to remove, and why any of them stays."""

    state: EntryState
    remove: list[str] = field(default_factory=list)
    kept_because: str | None = None


@dataclass
class RollbackPlan:
    """Per target bucket, what goes; and every object that stays, with the reason."""

    entries: dict[str, list[RollbackEntry]] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)

    @property
    def to_remove(self) -> list[str]:
        return sorted(
            f"{bucket}/{path}"
            for bucket, entries in self.entries.items()
            for entry in entries
            for path in entry.remove
        )


def owned_objects(
    manifest: Manifest,
) -> tuple[dict[str, list[tuple[EntryState, list[str]]]], dict[str, str]]:
    """Per target bucket, each source's objects the backfill owns; and what stays, with why."""
    owned: dict[str, list[tuple[EntryState, list[str]]]] = defaultdict(list)
    kept: dict[str, str] = {}
    for state in manifest.states.values():
        if state.target_bucket is None:
            continue
        paths = []
        if state.owns_target and state.target_path:
            paths.append(state.target_path)
        if state.owns_thumbnail and state.thumbnail_path:
            paths.append(state.thumbnail_path)
        if not paths:
            continue
        if state.source_removed:
            for path in paths:
                kept[f"{state.target_bucket}/{path}"] = (
                    f"its source {state.key} was removed, so this is the only copy"
                )
            continue
        owned[state.target_bucket].append((state, paths))
    return owned, kept


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0] + "/"


_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")

Hasher = Callable[[list[ContentCheck]], Awaitable[list[str | None]]]
"""SHA-256 of each object (or of the thumbnail it makes), None for one that is gone."""

Prober = Callable[[str, list[str]], Awaitable[tuple[dict[str, ObjectInfo], dict[str, str]]]]
"""``(bucket, folders)`` -> the objects found there by path, and the folders that could not be
listed (folder -> error)."""

Remover = Callable[[str, list[str]], Awaitable[list[str]]]
"""``(bucket, paths)`` -> the paths that existed and were removed."""


@dataclass(frozen=True)
class _Judged:
    """One owned object present now: how to learn its content and what it should be."""

    path: str
    md5_matches: bool | None
    actual: ContentCheck | None
    expected: str | ContentCheck | None


def _judge_target(bucket: str, state: EntryState, info: ObjectInfo) -> _Judged:
    path = info.path
    if info.etag and state.md5 and _MD5_HEX.match(info.etag):
        return _Judged(path, info.etag == state.md5, None, None)
    expected: str | ContentCheck = state.sha256 or ContentCheck(
        state.source_bucket, state.source_path
    )
    return _Judged(path, None, ContentCheck(bucket, path), expected)


def _judge_thumbnail(bucket: str, state: EntryState, info: ObjectInfo) -> _Judged:
    expected: str | ContentCheck = state.thumbnail_sha256 or ContentCheck(
        state.source_bucket, state.source_path, thumbnail_of=True
    )
    return _Judged(info.path, None, ContentCheck(bucket, info.path), expected)


def _verdict(judged: _Judged, hashes: dict[ContentCheck, str | None]) -> str | None:
    """None when the object holds what the backfill wrote, else why it stays."""
    if judged.md5_matches is not None:
        return None if judged.md5_matches else "conflict: its MD5 differs from the recorded copy"
    assert judged.actual is not None
    actual = hashes.get(judged.actual)
    expected = judged.expected
    wanted = hashes.get(expected) if isinstance(expected, ContentCheck) else expected
    if actual is None:
        return "gone"
    if wanted is None:
        return "no recorded hash and its source cannot be read, so its content cannot be told"
    if actual != wanted:
        return f"conflict: its bytes (sha256 {actual[:12]}) differ from what the backfill wrote"
    return None


async def plan_rollback(manifest: Manifest, prober: Prober, hasher: Hasher) -> RollbackPlan:
    """Check what the backfill owns against what is there now, by content."""
    owned, kept = owned_objects(manifest)
    plan = RollbackPlan(kept=kept)
    for bucket, states in owned.items():
        folders = sorted({_folder(p) for _, paths in states for p in paths})
        existing, unknown = await prober(bucket, folders)
        judged: list[tuple[RollbackEntry, _Judged]] = []
        entries = plan.entries.setdefault(bucket, [])
        for state, paths in states:
            entry = RollbackEntry(state)
            entries.append(entry)
            for path in paths:
                error = unknown.get(_folder(path))
                info = existing.get(path)
                if error is not None:
                    entry.kept_because = f"could not be listed ({error}); run the rollback again"
                    plan.kept[f"{bucket}/{path}"] = entry.kept_because
                elif info is not None and path == state.target_path:
                    judged.append((entry, _judge_target(bucket, state, info)))
                elif info is not None:
                    judged.append((entry, _judge_thumbnail(bucket, state, info)))
        checks = sorted(
            {c for _, j in judged for c in (j.actual, j.expected) if isinstance(c, ContentCheck)},
            key=lambda c: (c.bucket, c.path, c.thumbnail_of),
        )
        hashes = dict(zip(checks, await hasher(checks), strict=True)) if checks else {}
        for entry, one in judged:
            reason = _verdict(one, hashes)
            if reason is None:
                entry.remove.append(one.path)
            elif reason != "gone":
                entry.kept_because = reason
                plan.kept[f"{bucket}/{one.path}"] = reason
                if reason.startswith("conflict"):
                    plan.conflicts.append(f"{bucket}/{one.path}")
    plan.conflicts.sort()
    return plan


def _rollback_record(state: EntryState, outcome: Outcome, detail: str) -> ManifestRecord:
    return ManifestRecord(
        outcome=outcome,
        source_bucket=state.source_bucket,
        source_path=state.source_path,
        target_bucket=state.target_bucket,
        target_path=state.target_path,
        detail=detail,
    )


async def apply_rollback(plan: RollbackPlan, writer: ManifestWriter, remove: Remover) -> list[str]:
    """Remove the planned objects, recording per source what went; returns the removed paths.

    A source whose objects all went (or were already gone) is ``rolled_back`` and owns nothing
    any more; one with an object kept is ``rollback_skipped`` and keeps its claim, so a later
    rollback tries again.
    """
    removed_paths: list[str] = []
    for bucket, entries in plan.entries.items():
        for start in range(0, len(entries), REMOVE_CHUNK):
            chunk = entries[start : start + REMOVE_CHUNK]
            wanted = [path for entry in chunk for path in entry.remove]
            removed = set(await remove(bucket, wanted)) if wanted else set()
            removed_paths += [f"{bucket}/{path}" for path in wanted if path in removed]
            for entry in chunk:
                gone = ", ".join(p for p in entry.remove if p in removed) or "nothing"
                if entry.kept_because:
                    detail = f"{entry.kept_because}; removed {gone}"
                    writer.append(_rollback_record(entry.state, "rollback_skipped", detail))
                else:
                    writer.append(_rollback_record(entry.state, "rolled_back", f"removed {gone}"))
    return sorted(removed_paths)
