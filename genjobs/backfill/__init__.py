"""Backfill of the legacy buckets onto the contract layout (contract section 7).

``legacy_paths`` parses legacy object keys, ``plan`` turns bucket listings into a copy plan,
``manifest`` keeps the JSON-lines record that is also the checkpoint, ``transfer`` copies and
verifies one object, ``thumbnails`` makes posters, ``steps`` holds the Prefect tasks and
``report`` the markdown artifacts. The flows live in ``flows/backfill.py``.
"""
