"""What ``genjobs run`` says about a job that did not complete: one line, for a person.

A refused or failed job raises its :class:`~genjobs.errors.JobError` out of the flow, after the
flow sent the failed callback. When that callback itself was refused or could not be delivered,
the flow raises the callback's error instead, chained to the job's own (``__context__``); the
line then gives both: why the job failed, and what became of its callback.
"""

from __future__ import annotations

import json
from pathlib import Path

from genjobs.devserver.receiver import CallbackReceiver
from genjobs.errors import CallbackRejected, CallbackUnavailable, ErrorCode, JobError

CALLBACK_ERRORS = (CallbackRejected, CallbackUnavailable)
REFUSAL_CODES = frozenset(
    {
        ErrorCode.INVALID_PAYLOAD,
        ErrorCode.UNSUPPORTED_JOB_TYPE,
        ErrorCode.COMPEL_UNSUPPORTED,
        ErrorCode.REFERENCE_MODE_UNSUPPORTED,
    }
)
SECRET_HINT = (
    "check JOB_CALLBACK_SECRET: it must be the secret the callback endpoint verifies "
    "signatures with"
)


def split_failure(error: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(the job's own error, the error of its callback); either may be None."""
    if isinstance(error, CALLBACK_ERRORS):
        cause = error.__context__
        if cause is not None and not isinstance(cause, CALLBACK_ERRORS):
            return cause, error
        return None, error
    return error, None


def describe_error(error: BaseException) -> str:
    """``refused (CODE): message`` for a refusal, ``failed (CODE): message`` otherwise."""
    if isinstance(error, JobError):
        verb = "was refused" if error.code in REFUSAL_CODES else "failed"
        return f"{verb} ({error.code}): {error.message}"
    return f"failed ({type(error).__name__}): {error}"


def _receiver_answer(receiver: CallbackReceiver, job_id: str, status: str) -> str | None:
    """How the local receiver answered the job's last ``status`` callback, if it got one."""
    for request in reversed(receiver.requests):
        try:
            body = json.loads(request.body)
        except ValueError:
            continue
        if body.get("job_id") == job_id and body.get("status") == status:
            if request.answered == 200 and request.skipped:
                return "skipped (the receiver knows the job as finished already)"
            if request.answered == 200:
                return "accepted"
            return f"refused with HTTP {request.answered}"
    return None


def describe_callback(
    callback_error: BaseException | None,
    *,
    job_id: str | None,
    status: str,
    url: str | None,
    outbox: Path,
    receiver: CallbackReceiver | None,
    delivered: bool,
) -> str:
    """The fate of the job's terminal callback, as a sentence. ``delivered``: the flow's error
    says that its callback was delivered (raised after the delivery, and not by it)."""
    if job_id is None:
        return f"No {status} callback was sent: the payload has no usable 'id'."
    if isinstance(callback_error, CallbackUnavailable):
        return (
            f"The {status} callback could not be delivered to {url} ({callback_error}); it "
            f"waits in the outbox {outbox}, and `genjobs redeliver` sends it again."
        )
    if isinstance(callback_error, CallbackRejected):
        hint = f"; {SECRET_HINT}" if " 401" in str(callback_error) else ""
        return f"The {status} callback was refused by {url} ({callback_error}){hint}."
    if receiver is not None:  # the local receiver: its record is the answer
        answer = _receiver_answer(receiver, job_id, status)
        if answer is None:
            return f"No {status} callback reached the local receiver {url}."
        return f"The {status} callback was {answer} by {url}."
    if not delivered:
        return f"Whether a {status} callback reached {url} is not known (see -v)."
    return f"The {status} callback was accepted by {url}."


def failure_line(
    error: BaseException,
    *,
    job_id: str | None,
    url: str | None,
    outbox: Path,
    receiver: CallbackReceiver | None,
) -> str:
    """One line: what went wrong with the job, and whether its terminal callback was taken."""
    own, callback_error = split_failure(error)
    label = f"Job {job_id}" if job_id else "The job"
    if own is None:  # rendered and stored; only the completed callback went wrong
        what = f"{label} rendered, but its completed callback did not get through."
        status = "completed"
    else:
        what = f"{label} {describe_error(own)}."
        status = "failed"
    fate = describe_callback(
        callback_error,
        job_id=job_id,
        status=status,
        url=url,
        outbox=outbox,
        receiver=receiver,
        # A JobError comes out of the flow's body after its failed callback went out; anything
        # else may have stopped the run before that (the API did not start, say).
        delivered=isinstance(own, JobError),
    )
    return f"{what} {fate}"
