-- Test bootstrap: what a plain PostgreSQL (13 or later) needs before the migrations in
-- supabase/migrations can run. NOT a migration and never applied to a Supabase project, which
-- ships all of this in its Postgres image and storage server.
--
-- It mirrors the pieces the migrations and their row-level security rely on:
--   * roles anon, authenticated (NOLOGIN) and service_role (NOLOGIN, BYPASSRLS);
--   * schema auth with auth.users (id only) and auth.uid(), auth.role(), auth.jwt(), which read
--     the per-request settings request.jwt.claim.sub / request.jwt.claim.role / request.jwt.claims
--     the way PostgREST and the storage server set them;
--   * schema storage with minimal storage.buckets and storage.objects (RLS enabled) and
--     storage.foldername(name);
--   * Supabase's default privileges in schema public and an empty supabase_realtime publication;
--   * minimal public.character_scenes and public.conversations, the backend's tables whose
--     references the workspace cleanup respects.
--
-- Idempotent: roles are cluster-wide and survive the per-test databases, and the whole file may
-- be applied twice.

-- Roles -------------------------------------------------------------------------------------
do $$
declare
  spec record;
begin
  for spec in
    select * from (values
      ('anon', 'nologin noinherit'),
      ('authenticated', 'nologin noinherit'),
      ('service_role', 'nologin noinherit bypassrls')
    ) as roles (name, options)
  loop
    if not exists (select 1 from pg_roles where rolname = spec.name) then
      begin
        execute format('create role %I %s', spec.name, spec.options);
      exception
        -- Another database bootstrapped at the same moment created it: roles are cluster-wide.
        when duplicate_object or unique_violation then null;
      end;
    end if;
  end loop;
end
$$;

grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;

-- auth --------------------------------------------------------------------------------------
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
  id uuid primary key
);

-- As in the Supabase Postgres image: a claim set earlier in the session and reset at the end
-- of its transaction reads back as '', hence nullif.
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt()
  to anon, authenticated, service_role;

-- storage -----------------------------------------------------------------------------------
create schema if not exists storage;
grant usage on schema storage to anon, authenticated, service_role;

create table if not exists storage.buckets (
  id text primary key,
  name text not null unique,
  owner uuid,
  public boolean default false,
  file_size_limit bigint,
  allowed_mime_types text[],
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);

create table if not exists storage.objects (
  id uuid primary key default gen_random_uuid(),
  bucket_id text references storage.buckets (id),
  name text,
  owner uuid,
  owner_id text,
  metadata jsonb,
  user_metadata jsonb,
  path_tokens text[] generated always as (string_to_array(name, '/')) stored,
  version text,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  last_accessed_at timestamptz default now()
);
create unique index if not exists bucketid_objname on storage.objects (bucket_id, name);

alter table storage.objects enable row level security;
alter table storage.buckets enable row level security;
grant all on storage.objects, storage.buckets to anon, authenticated, service_role;

-- Same body as Supabase's storage.foldername: every path segment but the last.
create or replace function storage.foldername(name text) returns text[]
language plpgsql immutable
as $$
declare
  _parts text[];
begin
  select string_to_array(name, '/') into _parts;
  return _parts[1:array_length(_parts, 1) - 1];
end
$$;

grant execute on function storage.foldername(text) to anon, authenticated, service_role;

-- Realtime ----------------------------------------------------------------------------------
-- Supabase creates this publication empty; a plain server only warns that wal_level is not
-- 'logical', which is harmless here.
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

-- Backend tables the workspace cleanup reads (contract section 8) --------------------------
-- Minimal stand-ins for the backend's own tables, which no migration here creates: only the
-- columns that may hold a workspace-temp path or a signed URL to one.
create table if not exists public.character_scenes (
  id uuid primary key default gen_random_uuid(),
  image_url text
);

create table if not exists public.conversations (
  id uuid primary key default gen_random_uuid(),
  last_scene_image text
);
