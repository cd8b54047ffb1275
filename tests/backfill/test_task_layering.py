"""The backfill's and the cleanup's tasks: where they live, what they declare, what the library
below them imports."""

from __future__ import annotations

import subprocess
import sys

from genjobs.settings import Settings
from tasks import backfill, cleanup
from tasks.retries import database_policy, retry_if_transient, storage_policy, with_retries

TASK_NAMES = {
    backfill.inventory_bucket: "inventory-bucket",
    backfill.check_target_bucket: "check-target-bucket",
    backfill.probe_targets: "probe-targets",
    backfill.probe_target: "probe-target",
    backfill.fingerprint_sources: "fingerprint-sources",
    backfill.copy_batch: "copy-batch",
    backfill.copy_object: "copy-object",
    backfill.remove_objects: "remove-objects",
    backfill.record_backfilled_copies: "record-backfilled-copies",
    backfill.forget_backfilled_copies: "forget-backfilled-copies",
    backfill.hash_contents: "hash-contents",
    cleanup.list_bucket: "list-bucket",
    cleanup.check_tables_task: "check-tables",
    cleanup.read_evidence_task: "read-evidence",
    cleanup.delete_expired_rows_task: "delete-expired-rows",
}


def test_each_task_keeps_its_name_and_declares_no_retry_count() -> None:
    for task_obj, name in TASK_NAMES.items():
        assert task_obj.name == name
        assert task_obj.retries == 0, name
        assert task_obj.retry_condition_fn is retry_if_transient, name


def test_the_call_site_policy_sets_the_retries() -> None:
    settings = Settings(  # type: ignore[call-arg]
        storage_retries=3,
        storage_retry_base_seconds=0.5,
        database_retries=2,
        database_retry_base_seconds=2.0,
    )
    copying = with_retries(backfill.copy_batch, storage_policy(settings))
    recording = with_retries(backfill.record_backfilled_copies, database_policy(settings))
    assert (copying.name, copying.retries, copying.retry_delay_seconds) == (
        "copy-batch",
        3,
        [0.5, 1.0, 2.0],
    )
    assert (recording.name, recording.retries, recording.retry_delay_seconds) == (
        "record-backfilled-copies",
        2,
        [2.0, 4.0],
    )
    assert copying.retry_condition_fn is retry_if_transient


def test_the_backfill_library_imports_no_task_flow_or_block() -> None:
    code = (
        "import sys, genjobs.backfill.run_state, genjobs.backfill.rollback, "
        "genjobs.backfill.transfer, genjobs.backfill.plan, genjobs.backfill.report\n"
        "above = ('tasks', 'flows', 'blocks')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in above)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
