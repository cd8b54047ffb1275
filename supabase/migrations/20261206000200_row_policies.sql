-- Row policies: users read their rows; what they may change is narrowed to what the app needs.
--
-- public.workspace_assets: rows are written by job-callback and changed or deleted by
-- workspace-actions (discard, clear, save to library), both with the service role. The frontend
-- only lists a user's rows. The former workspace_policy (FOR ALL) let a user insert a row naming
-- another user's object, or move expires_at (which the cleanup honours) into the future; users
-- now get SELECT on their own rows and nothing else.
--
-- public.jobs: a user's update of their own job may only cancel it: status from 'queued' or
-- 'processing' to 'cancelled', every other column unchanged. Policies cannot compare with the
-- old row, so a BEFORE UPDATE trigger checks it; it applies to the API roles (anon,
-- authenticated) updating a job of their own, whatever the project's policies on the table.
--
-- Idempotent: policies are dropped before they are created, the function is replaced, the
-- trigger dropped and created again.

-- public.workspace_assets ------------------------------------------------------------------

drop policy if exists workspace_policy on public.workspace_assets;
drop policy if exists workspace_assets_owner_select on public.workspace_assets;
create policy workspace_assets_owner_select on public.workspace_assets
  for select to authenticated
  using (auth.uid() = user_id);

revoke insert, update, delete, truncate on public.workspace_assets from anon, authenticated;
grant select on public.workspace_assets to authenticated;

-- public.jobs ------------------------------------------------------------------------------

create or replace function public.jobs_user_update_only_cancels()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_user not in ('anon', 'authenticated')
     or old.user_id is distinct from auth.uid() then
    return new;  -- the service role, an owner of the database, or another rule's business
  end if;
  if old.status not in ('queued', 'processing') or new.status <> 'cancelled' then
    raise exception 'A job can only be cancelled by its user while it is queued or processing'
      using errcode = 'insufficient_privilege';
  end if;
  if (to_jsonb(new) - 'status') is distinct from (to_jsonb(old) - 'status') then
    raise exception 'Cancelling a job changes its status only'
      using errcode = 'insufficient_privilege';
  end if;
  return new;
end
$$;

revoke all on function public.jobs_user_update_only_cancels() from public, anon, authenticated;

drop trigger if exists jobs_user_update_only_cancels on public.jobs;
create trigger jobs_user_update_only_cancels
  before update on public.jobs
  for each row execute function public.jobs_user_update_only_cancels();
