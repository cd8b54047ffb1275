-- What the real storage server needs on a plain PostgreSQL beyond supabase/test_bootstrap.sql's
-- roles, auth schema and publication (applied first, without its storage part: the server
-- creates storage.* itself): the authenticator role it connects through, auth.email() and an
-- email column on auth.users, as a Supabase database has them. Idempotent: roles are
-- cluster-wide and shared with other databases.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    begin
      create role authenticator login noinherit;
    exception
      when duplicate_object or unique_violation then null;
    end;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

alter table auth.users add column if not exists email text;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

grant execute on function auth.email() to anon, authenticated, service_role;
