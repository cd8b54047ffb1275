"""The project's one error hierarchy and every error code it reports.

Every failure that can end a job is a :class:`JobError`. Each knows the error code and type the
failed callback reports and whether a later attempt could succeed. Errors from third-party
libraries are translated into these once, at the I/O edge, and chained with ``raise ... from``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every code an error carries; a member serialises as its value (``"UPLOAD_ERROR"``)."""

    # Jobs
    INTERNAL_ERROR = "INTERNAL_ERROR"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    UNSUPPORTED_JOB_TYPE = "UNSUPPORTED_JOB_TYPE"
    COMPEL_UNSUPPORTED = "COMPEL_UNSUPPORTED"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    REFERENCE_DOWNLOAD_ERROR = "REFERENCE_DOWNLOAD_ERROR"
    REFERENCE_MODE_UNSUPPORTED = "REFERENCE_MODE_UNSUPPORTED"
    CROSS_USER_REFERENCE = "CROSS_USER_REFERENCE"
    MODEL_LOAD_ERROR = "MODEL_LOAD_ERROR"
    OOM_ERROR = "OOM_ERROR"
    RENDER_TIMEOUT = "RENDER_TIMEOUT"
    ENCODE_ERROR = "ENCODE_ERROR"
    CANCELLED = "CANCELLED"
    WORKER_CRASHED = "WORKER_CRASHED"
    JOB_ASSETS_EXIST = "JOB_ASSETS_EXIST"
    # Storage
    UPLOAD_ERROR = "UPLOAD_ERROR"
    BUCKET_NOT_FOUND = "BUCKET_NOT_FOUND"
    OBJECT_NOT_FOUND = "OBJECT_NOT_FOUND"
    OBJECT_EXISTS = "OBJECT_EXISTS"
    OBJECT_TOO_LARGE = "OBJECT_TOO_LARGE"
    OBJECT_OVER_READ_LIMIT = "OBJECT_OVER_READ_LIMIT"
    INVALID_MIME_TYPE = "INVALID_MIME_TYPE"
    INVALID_OBJECT_PATH = "INVALID_OBJECT_PATH"
    STORAGE_ACCESS_DENIED = "STORAGE_ACCESS_DENIED"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    STORAGE_BAD_REQUEST = "STORAGE_BAD_REQUEST"
    STORAGE_BAD_RESPONSE = "STORAGE_BAD_RESPONSE"
    # Callback
    CALLBACK_NOT_CONFIGURED = "CALLBACK_NOT_CONFIGURED"
    CALLBACK_REJECTED = "CALLBACK_REJECTED"
    CALLBACK_UNAVAILABLE = "CALLBACK_UNAVAILABLE"
    # Database and maintenance flows
    DATABASE_ERROR = "DATABASE_ERROR"
    THUMBNAIL_ERROR = "THUMBNAIL_ERROR"
    VERIFY_MISMATCH = "VERIFY_MISMATCH"
    BACKFILL_REFUSED = "BACKFILL_REFUSED"
    BACKFILL_INCOMPLETE = "BACKFILL_INCOMPLETE"
    CLEANUP_REFUSED = "CLEANUP_REFUSED"


class JobError(Exception):
    """A failure that ends a job with a ``failed`` callback."""

    code: str = ErrorCode.INTERNAL_ERROR
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

    code = ErrorCode.INVALID_PAYLOAD


class UnsupportedJobType(JobError):
    code = ErrorCode.UNSUPPORTED_JOB_TYPE


class ReferenceDownloadError(JobError):
    code = ErrorCode.REFERENCE_DOWNLOAD_ERROR


class ReferenceModeUnsupported(JobError):
    code = ErrorCode.REFERENCE_MODE_UNSUPPORTED


class ModelLoadError(JobError):
    code = ErrorCode.MODEL_LOAD_ERROR


class OutOfMemory(JobError):
    code = ErrorCode.OOM_ERROR
    retryable = True


class RenderTimeout(JobError):
    """A dispatched render was lost or stuck more often than the flow re-submits it."""

    code = ErrorCode.RENDER_TIMEOUT
    retryable = True


class JobCancelled(JobError):
    code = ErrorCode.CANCELLED


class StorageError(JobError):
    """A storage call failed. ``status`` is the storage status code as a string, if any."""

    code = ErrorCode.UPLOAD_ERROR

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

    code = ErrorCode.JOB_ASSETS_EXIST


class CallbackRejected(JobError):
    """The callback endpoint refused the request for a reason a retry cannot fix (4xx)."""

    code = ErrorCode.CALLBACK_REJECTED


class CallbackUnavailable(JobError):
    """The callback endpoint could not be reached or answered 5xx/429."""

    code = ErrorCode.CALLBACK_UNAVAILABLE
    retryable = True


class DatabaseError(JobError):
    """The project database could not be reached or refused a statement."""

    code = ErrorCode.DATABASE_ERROR


class ThumbnailError(JobError):
    """The bytes could not be decoded into a picture; retrying will not help."""

    code = ErrorCode.THUMBNAIL_ERROR
    retryable = False


class BackfillRefused(JobError):
    """The run would remove sources whose copies it cannot record; nothing was done."""

    code = ErrorCode.BACKFILL_REFUSED


class BackfillIncomplete(JobError):
    """Some sources still failed after their retries; a later run picks them up."""

    code = ErrorCode.BACKFILL_INCOMPLETE
    retryable = True


class CleanupRefused(JobError):
    """The cleanup cannot tell what is still needed, so it removes nothing."""

    code = ErrorCode.CLEANUP_REFUSED


def is_transient(exc: BaseException) -> bool:
    """Whether a later attempt of the same step could succeed."""
    return isinstance(exc, JobError) and exc.retryable
