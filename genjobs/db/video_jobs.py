"""Legacy ``jobs.video_id`` -> ``(user_id, job_id)``, read once from PostgreSQL.

Only the two legacy ``video_id`` layouts of the backfill need it. The column is legacy and may
be absent (then nothing resolves).
"""

from __future__ import annotations

import logging

from genjobs.db.sql import run_sql

logger = logging.getLogger(__name__)

_HAS_VIDEO_ID = """
    select 1 from information_schema.columns
    where table_schema = 'public' and table_name = 'jobs' and column_name = 'video_id'
"""
_VIDEO_IDS = """
    select video_id::text, user_id::text, id::text from public.jobs where video_id is not null
"""


def load_video_jobs(dsn: str) -> dict[str, tuple[str, str]]:
    """Every ``jobs`` row with a ``video_id``, as ``{video_id: (user_id, job_id)}``.

    Raises:
        DatabaseError: The database is unreachable (retryable) or refused the query.
    """
    if not run_sql(dsn, _HAS_VIDEO_ID):
        logger.info("public.jobs has no video_id column; video_id names stay unmapped.")
        return {}
    rows = run_sql(dsn, _VIDEO_IDS)
    found = {str(video_id): (str(user_id), str(job_id)) for video_id, user_id, job_id in rows}
    logger.info("Read %d legacy video_id(s) from public.jobs.", len(found))
    return found
