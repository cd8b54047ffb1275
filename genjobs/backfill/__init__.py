"""Backfill of the legacy buckets onto the contract layout (contract section 7).

``legacy_paths`` parses legacy object keys; ``plan`` turns bucket listings into a copy plan;
``manifest`` keeps the JSON-lines record that is also the checkpoint; ``transfer`` copies,
verifies and thumbnails objects (``thumbnails`` decodes them, ``throttle`` paces them);
``run_state`` what one run decided and recorded, ``rollback`` the undo and ``report`` the
markdown artifacts; the legacy ``jobs.video_id`` map is read by ``genjobs.db.video_jobs``. None
of it is a Prefect task: those live in ``tasks/backfill.py`` (``tasks/backfill_run.py`` drives a
run's batches through them) and ``tasks/cleanup.py``. The flows live in ``flows/backfill.py``;
the workspace cleanup in ``flows/cleanup.py``.
"""
