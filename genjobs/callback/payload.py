"""The callback payload in its snake_case form (contract section 5.2 and 5.5).

Serialised exactly once by :func:`serialise`; those bytes are signed and sent.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from genjobs.errors import ErrorCode, JobError

CallbackStatus = Literal["completed", "failed", "processing"]


class CallbackAsset(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["image", "video"]
    url: str
    thumbnail_url: str | None
    metadata: dict[str, Any]


class CallbackPayload(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    status: CallbackStatus
    error_message: str | None = None
    assets: list[CallbackAsset] = []
    metadata: dict[str, Any] = {}


def serialise(payload: CallbackPayload) -> bytes:
    """The one serialisation of a payload: compact JSON, UTF-8."""
    return json.dumps(
        payload.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def storable_text(text: str) -> str:
    """Escape control characters and lone surrogates (``\\x00``, ``\\ud800``).

    Error messages may quote payload values; PostgreSQL text cannot hold NUL and UTF-8 cannot
    encode a lone surrogate, so the backend could never record such a message.
    """
    return _UNSTORABLE.sub(lambda match: ascii(match.group())[1:-1], text)


def failure_payload(
    job_id: str, error: BaseException, extra: dict[str, Any] | None = None
) -> CallbackPayload:
    """A ``failed`` payload carrying the error message, type, code and retryability."""
    if isinstance(error, JobError):
        message, error_type, code, retryable = (
            error.message,
            error.error_type,
            error.code,
            error.retryable,
        )
    else:
        message = f"{type(error).__name__}: Internal processing error"
        error_type, code, retryable = type(error).__name__, ErrorCode.INTERNAL_ERROR, False
    message = storable_text(message)
    metadata = {"error_type": error_type, "error_code": code, "retryable": retryable}
    metadata.update(extra or {})
    return CallbackPayload(
        job_id=job_id, status="failed", error_message=message, assets=[], metadata=metadata
    )
