"""The project's one error hierarchy.

Every failure that can end a job is a :class:`JobError`. Each knows the error code and type the
failed callback reports and whether a later attempt could succeed. Errors from third-party
libraries are translated into these once, at the I/O edge, and chained with ``raise ... from``.
"""

from __future__ import annotations


class JobError(Exception):
    """A failure that ends a job with a ``failed`` callback."""

    code: str = "INTERNAL_ERROR"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    @property
    def error_type(self) -> str:
        return type(self).__name__


class InvalidPayload(JobError):
    """The job payload breaks the contract; the message names the field and value."""

    code = "INVALID_PAYLOAD"


class UnsupportedJobType(JobError):
    code = "UNSUPPORTED_JOB_TYPE"


class ReferenceDownloadError(JobError):
    code = "REFERENCE_DOWNLOAD_ERROR"


class ReferenceModeUnsupported(JobError):
    code = "REFERENCE_MODE_UNSUPPORTED"


class ModelLoadError(JobError):
    code = "MODEL_LOAD_ERROR"


class OutOfMemory(JobError):
    code = "OOM_ERROR"
    retryable = True


class JobCancelled(JobError):
    code = "CANCELLED"


class StorageError(JobError):
    """A storage call failed. ``status`` is the storage status code as a string, if any."""

    code = "UPLOAD_ERROR"

    def __init__(
        self,
        message: str,
        *,
        status: str | None = None,
        code: str | None = None,
        retryable: bool | None = None,
    ):
        super().__init__(message, code=code, retryable=retryable)
        self.status = status


class JobAssetsExist(JobError):
    """The job's folder already holds objects (an earlier run stored them): a run of the job
    renders, stores and removes nothing."""

    code = "JOB_ASSETS_EXIST"


class CallbackRejected(JobError):
    """The callback endpoint refused the request for a reason a retry cannot fix (4xx)."""

    code = "CALLBACK_REJECTED"


class CallbackUnavailable(JobError):
    """The callback endpoint could not be reached or answered 5xx/429."""

    code = "CALLBACK_UNAVAILABLE"
    retryable = True


def is_transient(exc: BaseException) -> bool:
    """Whether a later attempt of the same step could succeed."""
    return isinstance(exc, JobError) and exc.retryable
