-- Cleanup helpers (contract section 8), for the service role only.
--
--   cleanup_expired_workspace_assets()   deletes expired workspace_assets rows; returns the count.
--   clean_orphaned_jobs()                deletes completed jobs older than 24 hours that have
--                                        no workspace_assets row; returns the count.
--   delete_workspace_assets_by_paths(paths, as_of)
--                                        deletes the rows expired at as_of (default now())
--                                        whose temp_storage_path is in paths and returns them,
--                                        so the cleanup flow removes objects and then exactly
--                                        the rows it removed them for.
--
-- None of them touches storage objects. The live project may already define the first two
-- with another return type; such a definition is replaced.

do $$
begin
  if exists (
    select 1 from pg_proc
    where oid = to_regprocedure('public.cleanup_expired_workspace_assets()')
      and prorettype <> 'integer'::regtype
  ) then
    drop function public.cleanup_expired_workspace_assets();
  end if;
  if exists (
    select 1 from pg_proc
    where oid = to_regprocedure('public.clean_orphaned_jobs()')
      and prorettype <> 'integer'::regtype
  ) then
    drop function public.clean_orphaned_jobs();
  end if;
end
$$;

create or replace function public.cleanup_expired_workspace_assets()
returns integer
language plpgsql
security invoker
set search_path = ''
as $$
declare
  deleted integer;
begin
  delete from public.workspace_assets where expires_at < now();
  get diagnostics deleted = row_count;
  return deleted;
end
$$;

create or replace function public.clean_orphaned_jobs()
returns integer
language plpgsql
security invoker
set search_path = ''
as $$
declare
  deleted integer;
begin
  delete from public.jobs as j
  where j.status = 'completed'
    and j.created_at < now() - interval '24 hours'
    and not exists (select 1 from public.workspace_assets as a where a.job_id = j.id);
  get diagnostics deleted = row_count;
  return deleted;
end
$$;

create or replace function public.delete_workspace_assets_by_paths(
  paths text[],
  as_of timestamptz default now()
)
returns setof public.workspace_assets
language sql
security invoker
set search_path = ''
as $$
  delete from public.workspace_assets
  where temp_storage_path = any (paths)
    and expires_at < as_of
  returning *
$$;

revoke all on function public.cleanup_expired_workspace_assets() from public, anon, authenticated;
revoke all on function public.clean_orphaned_jobs() from public, anon, authenticated;
revoke all on function public.delete_workspace_assets_by_paths(text[], timestamptz)
  from public, anon, authenticated;
grant execute on function public.cleanup_expired_workspace_assets() to service_role;
grant execute on function public.clean_orphaned_jobs() to service_role;
grant execute on function public.delete_workspace_assets_by_paths(text[], timestamptz)
  to service_role;
