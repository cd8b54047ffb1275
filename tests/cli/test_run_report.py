"""The one line on a job that did not complete, when the run stopped before its callback."""

from __future__ import annotations

from pathlib import Path

from genjobs.devserver.receiver import CallbackReceiver
from genjobs.errors import CallbackUnavailable, UnsupportedJobType
from genjobs.run_report import failure_line

JOB_ID = "6f6adcca-04aa-4727-ac5f-3cdae725b001"
URL = "https://abcd.supabase.co/functions/v1/job-callback"


def test_a_run_that_never_reached_the_local_receiver_does_not_claim_a_callback(
    tmp_path: Path,
) -> None:
    with CallbackReceiver("secret") as receiver:
        line = failure_line(
            RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server."),
            job_id=JOB_ID,
            url=receiver.url,
            outbox=tmp_path,
            receiver=receiver,
        )
    assert line == (
        f"Job {JOB_ID} failed (RuntimeError): Timed out while attempting to connect to ephemeral "
        f"Prefect API server.. No failed callback reached the local receiver {receiver.url}."
    )


def test_an_error_from_outside_the_flow_leaves_a_remote_callback_unknown(tmp_path: Path) -> None:
    line = failure_line(
        RuntimeError("boom"), job_id=JOB_ID, url=URL, outbox=tmp_path, receiver=None
    )
    assert line.endswith(f"Whether a failed callback reached {URL} is not known (see -v).")


def test_a_refusal_whose_callback_waits_in_the_outbox_says_where_and_how_to_resend(
    tmp_path: Path,
) -> None:
    try:
        try:
            raise UnsupportedJobType("Job type 'rv51_fast' (field 'type') is not supported")
        except UnsupportedJobType:
            raise CallbackUnavailable("The callback endpoint answered 503: busy") from None
    except CallbackUnavailable as exc:
        error = exc
    line = failure_line(error, job_id=JOB_ID, url=URL, outbox=tmp_path, receiver=None)
    assert line == (
        f"Job {JOB_ID} was refused (UNSUPPORTED_JOB_TYPE): Job type 'rv51_fast' (field 'type') is "
        f"not supported. The failed callback could not be delivered to {URL} (The callback "
        f"endpoint answered 503: busy); it waits in the outbox {tmp_path}, and `genjobs "
        "redeliver` sends it again."
    )
