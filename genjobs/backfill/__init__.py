"""Backfill of the legacy buckets onto the contract layout (contract section 7).

``legacy_paths`` parses legacy object keys; ``plan`` turns bucket listings into a copy plan;
``manifest`` keeps the JSON-lines record that is also the checkpoint; ``transfer`` copies,
verifies and thumbnails objects (``thumbnails`` decodes them, ``throttle`` paces them);
``steps`` holds the Prefect tasks, ``runner`` one run's batches, ``rollback`` the undo and
``report`` the markdown artifacts; the legacy ``jobs.video_id`` map is read by
``genjobs.db.video_jobs``. The flows live in ``flows/backfill.py``; the workspace cleanup in
``flows/cleanup.py``.
"""
