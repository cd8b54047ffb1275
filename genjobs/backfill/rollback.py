"""Undoing a backfill: exactly the objects its manifest says it created, nothing else.

A source's target (and thumbnail) belongs to the backfill when a record says it created it, or
when an unfinished attempt found no object there before writing. Kept, with the reason: objects
whose source the backfill removed (they are the only copy now), verified targets whose size has
changed since (someone else wrote there) and objects in folders that could not be listed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from genjobs.backfill.manifest import EntryState, Manifest, ManifestRecord, ManifestWriter, Outcome
from genjobs.backfill.runner import TargetProber

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


async def plan_rollback(manifest: Manifest, prober: TargetProber) -> RollbackPlan:
    """Check what the backfill owns against what is there now."""
    owned, kept = owned_objects(manifest)
    plan = RollbackPlan(kept=kept)
    for bucket, states in owned.items():
        folders = sorted({_folder(p) for _, paths in states for p in paths})
        existing, unknown = await prober(bucket, folders)
        entries = plan.entries.setdefault(bucket, [])
        for state, paths in states:
            entry = RollbackEntry(state)
            for path in paths:
                error = unknown.get(_folder(path))
                info = existing.get(path)
                recorded = state.size if state.created_target else None
                if error is not None:
                    entry.kept_because = f"could not be listed ({error}); run the rollback again"
                elif info is None:
                    continue
                elif path == state.target_path and recorded not in (None, info.size):
                    entry.kept_because = (
                        f"changed since the backfill ({info.size} bytes, {recorded} recorded)"
                    )
                else:
                    entry.remove.append(path)
                    continue
                plan.kept[f"{bucket}/{path}"] = entry.kept_because
            entries.append(entry)
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


async def apply_rollback(plan: RollbackPlan, writer: ManifestWriter, remove_task: Any) -> list[str]:
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
            removed = set(await remove_task(bucket, wanted)) if wanted else set()
            removed_paths += [f"{bucket}/{path}" for path in wanted if path in removed]
            for entry in chunk:
                gone = ", ".join(p for p in entry.remove if p in removed) or "nothing"
                if entry.kept_because:
                    detail = f"{entry.kept_because}; removed {gone}"
                    writer.append(_rollback_record(entry.state, "rollback_skipped", detail))
                else:
                    writer.append(_rollback_record(entry.state, "rolled_back", f"removed {gone}"))
    return sorted(removed_paths)
