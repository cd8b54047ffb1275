-- Bucket workspace-temp: generated images, videos and their thumbnails at
-- {user_id}/{job_id}/{i}.{png|mp4} and {user_id}/{job_id}/{i}.thumb.webp (contract 4.1).
--
-- Private. On an existing bucket the size limit only grows (GREATEST with 200 MiB) and the
-- MIME allow-list only gains the types below (kept in its existing order, without repeats), so
-- other producers writing here keep working.

insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
values (
  'workspace-temp',
  'workspace-temp',
  false,
  209715200,
  array[
    'image/jpeg', 'image/png', 'image/webp',
    'video/mp4', 'video/webm', 'video/quicktime'
  ]
)
on conflict (id) do update set
  public = false,
  file_size_limit = greatest(storage.buckets.file_size_limit, 209715200),
  allowed_mime_types = array(
    select merged.mime
    from (
      select t.mime, min(t.ord) as first_ord
      from unnest(
        coalesce(storage.buckets.allowed_mime_types, '{}'::text[])
        || excluded.allowed_mime_types
      ) with ordinality as t (mime, ord)
      group by t.mime
    ) as merged
    order by merged.first_ord
  );

-- Row-level security on storage.objects (enabled by Supabase itself).
--
-- Owners read their own objects: the first path folder is their user id. The frontend signs
-- URLs with the user's session under exactly this rule; other users' objects read as 404.
--
-- Writes (INSERT, UPDATE, DELETE) get no policy on purpose: the flows and edge functions use
-- the service role, which bypasses row-level security, and a user's upload is refused with
-- "new row violates row-level security policy" while a user's remove deletes nothing. Policies
-- with other names that a live project may already have are left untouched.
drop policy if exists "workspace-temp: owners read own objects" on storage.objects;
create policy "workspace-temp: owners read own objects" on storage.objects
  for select to authenticated
  using (
    bucket_id = 'workspace-temp'
    and (storage.foldername(name))[1] = (auth.uid())::text
  );
