"""Database schema helpers.

The schema itself is SQL under the repository's ``supabase/`` folder; ``genjobs.db.migrations``
applies it to a PostgreSQL database (``python -m genjobs.db.migrations --help``).
"""
