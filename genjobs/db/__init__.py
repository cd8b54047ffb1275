"""Every statement against the project database, and its schema.

``sql`` runs statements (each psycopg error comes back as ``DatabaseError`` with a code and
whether a retry could help); ``backfilled_objects``, ``workspace_evidence`` and ``video_jobs``
hold the queries of the maintenance flows. The schema itself is SQL under the repository's
``supabase/`` folder; ``genjobs.db.migrations`` applies it to a PostgreSQL database
(``python -m genjobs.db.migrations --help``).
"""
