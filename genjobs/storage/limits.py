"""Sizes the storage side imposes: the bucket's object size limit and the upload routes.

The migrations create ``workspace-temp`` with ``file_size_limit`` 209715200 (200 MiB); the SQL
tests check that they agree with :data:`WORKSPACE_TEMP_FILE_SIZE_LIMIT`, and job validation
refuses an output whose worst-case size exceeds it.
"""

from __future__ import annotations

WORKSPACE_TEMP_BUCKET = "workspace-temp"
WORKSPACE_TEMP_FILE_SIZE_LIMIT = 200 * 1024 * 1024
"""Largest object ``workspace-temp`` accepts, in bytes (its ``file_size_limit``)."""

RESUMABLE_UPLOAD_THRESHOLD = 6 * 1024 * 1024
"""Objects larger than this go through a resumable (TUS) upload, as Supabase recommends;
smaller ones are one standard request."""
