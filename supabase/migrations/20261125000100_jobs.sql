-- public.jobs as the backend contract (section 6) describes it.
--
-- Idempotent: the live project already has this table, so every statement is a no-op there
-- (create ... if not exists) and existing row-level security policies are left untouched.
-- On a fresh database the owner policies below are created; the live project's admin access
-- rule is outside this repository.

create table if not exists public.jobs (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  job_type text not null check (job_type in (
    'sdxl_image_fast', 'sdxl_image_high',
    'image_fast', 'image_high',
    'video_fast', 'video_high',
    'wan_video_fast', 'wan_video_high',
    'image7b_fast_enhanced', 'image7b_high_enhanced',
    'video7b_fast_enhanced', 'video7b_high_enhanced',
    'rv51_fast', 'rv51_high'
  )),
  status text not null default 'queued'
    check (status in ('queued', 'processing', 'completed', 'failed', 'cancelled')),
  error_message text,
  metadata jsonb default '{}'::jsonb,
  created_at timestamptz default now(),
  started_at timestamptz,
  completed_at timestamptz,
  attempts integer default 0,
  max_attempts integer default 3,
  format text,
  quality text,
  model_type text,
  original_prompt text,
  destination text,
  -- Legacy links to the dropped images/videos tables.
  video_id uuid,
  image_id uuid
);

create index if not exists idx_jobs_cleanup
  on public.jobs (status, created_at)
  where status in ('processing', 'queued', 'failed');

alter table public.jobs enable row level security;

-- Owners read their jobs, queue their own and may cancel a queued or processing one.
-- Created only where the table has no policy yet, so a live project's own rules survive.
do $$
begin
  if not exists (
    select 1 from pg_policies where schemaname = 'public' and tablename = 'jobs'
  ) then
    create policy jobs_owner_select on public.jobs
      for select to authenticated
      using (auth.uid() = user_id);
    create policy jobs_owner_insert on public.jobs
      for insert to authenticated
      with check (auth.uid() = user_id and status = 'queued');
    create policy jobs_owner_cancel on public.jobs
      for update to authenticated
      using (auth.uid() = user_id and status in ('queued', 'processing'))
      with check (auth.uid() = user_id and status = 'cancelled');
  end if;
end
$$;

grant select, insert, update on public.jobs to authenticated;
grant all on public.jobs to service_role;
