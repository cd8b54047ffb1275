-- public.backfilled_objects: every legacy object the backfill copied onto the contract layout
-- and verified (same size and SHA-256 as its source), one row per source.
--
-- The backfill writes a row before it removes any source (delete_sources) and the workspace
-- cleanup never removes a path recorded here (target or thumbnail): a backfilled copy has no
-- workspace_assets row, and after its source is gone it is the only copy left.
--
-- Service role only: row-level security is enabled with no policy, so the anon and
-- authenticated roles see nothing. Idempotent.

create table if not exists public.backfilled_objects (
  source_bucket text not null,
  source_path text not null,
  target_bucket text not null,
  target_path text not null,
  thumbnail_path text,
  sha256 text not null check (sha256 ~ '^[0-9a-f]{64}$'),
  size_bytes bigint not null check (size_bytes >= 0),
  copied_at timestamptz not null default now(),
  primary key (source_bucket, source_path)
);

create index if not exists idx_backfilled_objects_target
  on public.backfilled_objects (target_bucket, target_path);
create index if not exists idx_backfilled_objects_thumbnail
  on public.backfilled_objects (target_bucket, thumbnail_path)
  where thumbnail_path is not null;

alter table public.backfilled_objects enable row level security;

revoke all on public.backfilled_objects from public, anon, authenticated;
grant all on public.backfilled_objects to service_role;
