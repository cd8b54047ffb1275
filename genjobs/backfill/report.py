"""Markdown reports of a backfill plan, a backfill run and a rollback (kept as artifacts)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field

from genjobs.backfill.manifest import ManifestRecord
from genjobs.backfill.plan import BackfillPlan

MAX_ROWS = 200
"""Rows per table; the rest is counted, and the manifest holds everything."""


class BackfillSummary(BaseModel):
    """What a backfill run returns (small, no secrets)."""

    dry_run: bool
    target_bucket: str
    manifest_path: str
    listed: int = 0
    mapped: int = 0
    unmappable: int = 0
    unmappable_by_reason: dict[str, int] = Field(default_factory=dict)
    folder_entries: int = 0
    outside_window: int = 0
    collision_groups: int = 0
    missing_buckets: list[str] = Field(default_factory=list)
    failed_buckets: dict[str, str] = Field(default_factory=dict)
    verified_earlier: int = 0
    outcomes: dict[str, int] = Field(default_factory=dict)
    created_objects: int = 0
    bytes_copied: int = 0
    sources_removed: int = 0
    copies_recorded: int = 0


class RollbackSummary(BaseModel):
    """What a rollback run returns."""

    dry_run: bool
    manifest_path: str
    removed: list[str] = Field(default_factory=list)
    kept: dict[str, str] = Field(default_factory=dict)
    conflicts: list[str] = Field(default_factory=list)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], limit: int = MAX_ROWS) -> str:
    """A markdown table of at most ``limit`` rows, with a line counting the rest."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    total = 0
    for row in rows:
        total += 1
        if total <= limit:
            lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    if total == 0:
        return "(none)"
    if total > limit:
        lines.append(f"\n{total - limit} more row(s) not shown; the manifest lists all.")
    return "\n".join(lines)


def summary_table(summary: BackfillSummary) -> str:
    rows: list[tuple[str, object]] = [
        ("objects listed", summary.listed),
        ("mappable sources", summary.mapped),
        ("unmappable objects", summary.unmappable),
        ("folder entries ignored", summary.folder_entries),
        ("outside the time window", summary.outside_window),
        ("collision groups", summary.collision_groups),
        ("verified in an earlier run", summary.verified_earlier),
        ("objects created (copies and thumbnails)", summary.created_objects),
        ("bytes copied", summary.bytes_copied),
        ("copies recorded in backfilled_objects", summary.copies_recorded),
        ("sources removed", summary.sources_removed),
        ("missing buckets", ", ".join(summary.missing_buckets) or "none"),
        ("buckets that failed to list", len(summary.failed_buckets)),
    ]
    rows += [(f"outcome `{name}`", count) for name, count in sorted(summary.outcomes.items())]
    return table(("", "count"), rows)


def plan_markdown(
    plan: BackfillPlan, summary: BackfillSummary, verified_keys: set[str], manifest_path: str
) -> str:
    """The plan as a dry run shows it: what would be copied where, and what cannot be."""
    mode = "dry run, nothing written" if summary.dry_run else "run"
    parts = [
        f"# Legacy backfill into `{plan.target_bucket}` ({mode})",
        f"Manifest: `{manifest_path}`",
        summary_table(summary),
        "## Buckets",
        table(
            ("bucket", "objects", "bytes", "state"),
            (
                (
                    inv.bucket,
                    len(inv.objects),
                    inv.total_bytes,
                    "missing" if inv.missing else (inv.error or "listed"),
                )
                for inv in plan.inventories
            ),
        ),
        "## Copies",
        table(
            ("source", "target", "thumbnail", "bytes", "layout", "state"),
            (
                (
                    item.key,
                    item.target_path,
                    item.thumbnail_path,
                    item.size,
                    item.source.layout,
                    "verified earlier" if item.key in verified_keys else "to copy",
                )
                for item in plan.copies
            ),
        ),
        "## Collisions (sources of the same asset; compared before any copy)",
        table(
            ("asset", "sources"),
            (
                (group[0].target_path, ", ".join(f"{i.key} ({i.size} B)" for i in group))
                for group in plan.collision_groups
            ),
        ),
        "## Unmappable objects",
        table(("reason", "count"), sorted(Counter(u.reason for u in plan.unmappable).items())),
        table(
            ("object", "reason", "detail"),
            ((f"{u.bucket}/{u.path}", u.reason, u.detail) for u in plan.unmappable),
        ),
    ]
    return "\n\n".join(parts) + "\n"


def run_markdown(
    plan: BackfillPlan, summary: BackfillSummary, records: Sequence[ManifestRecord]
) -> str:
    """The plan plus what this run did to each source that did not simply copy."""
    troubles = [r for r in records if r.outcome in ("conflict", "collision", "refused", "failed")]
    parts = [
        plan_markdown(plan, summary, set(), summary.manifest_path).rstrip("\n"),
        "## Conflicts, collisions, refusals and failures",
        table(
            ("source", "target", "outcome", "detail"),
            ((r.key, r.target_path or "", r.outcome, r.detail or "") for r in troubles),
        ),
        "## Thumbnails not created",
        table(
            ("source", "target", "detail"),
            (
                (r.key, r.target_path, r.detail)
                for r in records
                if r.outcome in ("copied", "already_present") and r.thumbnail_path is None
            ),
        ),
    ]
    return "\n\n".join(parts) + "\n"


def rollback_markdown(summary: RollbackSummary) -> str:
    mode = "dry run, nothing removed" if summary.dry_run else "run"
    verb = "would remove" if summary.dry_run else "removed"
    return (
        "\n\n".join(
            [
                f"# Backfill rollback ({mode})",
                f"Manifest: `{summary.manifest_path}`",
                f"{len(summary.removed)} object(s) {verb}; {len(summary.kept)} kept, "
                f"{len(summary.conflicts)} of them conflicts (other bytes than the backfill "
                "wrote).",
                "## Removed" if not summary.dry_run else "## To remove",
                table(("object",), ((path,) for path in summary.removed)),
                "## Kept",
                table(("object", "why"), sorted(summary.kept.items())),
            ]
        )
        + "\n"
    )
