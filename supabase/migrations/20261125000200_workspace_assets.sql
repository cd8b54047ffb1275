-- public.workspace_assets as the backend contract (section 6) describes it: one row per
-- generated asset, written by the job-callback edge function, read by the frontend.
--
-- Idempotent: the live project already has this table; existing columns are not altered.
-- The two unique keys are table constraints (usable by ON CONFLICT ON CONSTRAINT) and are
-- added only when neither a constraint nor an index of that name exists.

create table if not exists public.workspace_assets (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  asset_type text not null check (asset_type in ('image', 'video')),
  temp_storage_path text not null,
  file_size_bytes bigint not null,
  mime_type text not null,
  duration_seconds numeric(10, 3),
  thumbnail_path text,
  generation_seed bigint not null,
  original_prompt text not null,
  model_used text not null,
  generation_settings jsonb default '{}'::jsonb,
  width integer,
  height integer,
  -- jobs rows may be cleaned up before their assets: deliberately no foreign key.
  job_id uuid not null,
  asset_index integer not null default 0,
  created_at timestamptz default now(),
  expires_at timestamptz default (now() + interval '7 days')
);

do $$
begin
  if to_regclass('public.workspace_assets_job_id_asset_index_unique') is null then
    alter table public.workspace_assets
      add constraint workspace_assets_job_id_asset_index_unique unique (job_id, asset_index);
  end if;
  if to_regclass('public.workspace_assets_user_id_job_id_asset_index_key') is null then
    alter table public.workspace_assets
      add constraint workspace_assets_user_id_job_id_asset_index_key
      unique (user_id, job_id, asset_index);
  end if;
end
$$;

create index if not exists idx_workspace_user_created
  on public.workspace_assets (user_id, created_at desc);
create index if not exists idx_workspace_expires
  on public.workspace_assets (expires_at);

alter table public.workspace_assets enable row level security;

drop policy if exists workspace_policy on public.workspace_assets;
create policy workspace_policy on public.workspace_assets
  for all
  using (auth.uid() = user_id);

grant select, insert, update, delete on public.workspace_assets to authenticated;
grant all on public.workspace_assets to service_role;

-- Realtime sends whole old rows on UPDATE/DELETE; the frontend filters INSERTs by user_id.
alter table public.workspace_assets replica identity full;

do $$
begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
     and not exists (
       select 1 from pg_publication_tables
       where pubname = 'supabase_realtime'
         and schemaname = 'public'
         and tablename = 'workspace_assets'
     ) then
    alter publication supabase_realtime add table public.workspace_assets;
  end if;
end
$$;
