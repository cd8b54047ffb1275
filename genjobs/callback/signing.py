"""HMAC-SHA256 over the exact body bytes, as ``job-callback`` verifies it."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Callback-Signature"


def sign(secret: str, body: bytes) -> str:
    """``sha256=<lowercase hex HMAC-SHA256(secret, body)>``; the key is the secret's UTF-8 bytes."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` is the signature of ``body`` (constant-time compare).

    A signature with non-ASCII characters is simply wrong (``hmac.compare_digest`` would raise).
    """
    if signature is None or not signature.isascii():
        return False
    return hmac.compare_digest(sign(secret, body), signature)
