"""Development servers and test support: the real Supabase Storage server on loopback and the
reverse proxy that serves it under ``/storage/v1``. Not part of the runtime package."""
