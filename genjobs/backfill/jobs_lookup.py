"""Legacy ``jobs.video_id`` -> ``(user_id, job_id)``, read once from PostgreSQL.

Only the two ``video_id`` layouts need it. The column is legacy and may be absent (then nothing
resolves). psycopg is imported only when a database is configured.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_HAS_VIDEO_ID = """
    select 1 from information_schema.columns
    where table_schema = 'public' and table_name = 'jobs' and column_name = 'video_id'
"""
_VIDEO_IDS = """
    select video_id::text, user_id::text, id::text from public.jobs where video_id is not null
"""


def load_video_jobs(dsn: str, connect_timeout: int = 10) -> dict[str, tuple[str, str]]:
    """Every ``jobs`` row with a ``video_id``, as ``{video_id: (user_id, job_id)}``.

    Args:
        dsn: A PostgreSQL connection string for the project's database.
        connect_timeout: Seconds to wait for the connection.
    """
    import psycopg

    with psycopg.connect(dsn, connect_timeout=connect_timeout) as conn:
        if conn.execute(_HAS_VIDEO_ID).fetchone() is None:
            logger.info("public.jobs has no video_id column; video_id names stay unmapped.")
            return {}
        rows = conn.execute(_VIDEO_IDS).fetchall()
    found = {str(video_id): (str(user_id), str(job_id)) for video_id, user_id, job_id in rows}
    logger.info("Read %d legacy video_id(s) from public.jobs.", len(found))
    return found
