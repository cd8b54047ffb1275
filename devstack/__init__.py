"""Development servers and test support: the real Supabase Storage server on loopback and the
reverse proxy that serves it under ``/storage/v1``, the storage stand-in, the whole deployment on
one machine (stack.py) and the timed renderer. Used by tests/ and benchmarks/ (which do not import
each other); not part of the runtime package."""
