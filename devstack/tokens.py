"""HS256 JSON Web Tokens as a Supabase project signs them: the API keys and user sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_hs256(claims: dict[str, Any], secret: str) -> str:
    """Signs ``claims`` with HS256 and returns the compact token."""
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":"), sort_keys=True).encode())
        for part in (header, claims)
    )
    signature = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def role_key(role: str, secret: str) -> str:
    """An API key for ``role`` (``service_role`` or ``anon``), like a project's keys."""
    now = int(time.time())
    return sign_hs256(
        {"role": role, "iss": "supabase", "iat": now, "exp": now + 10 * 365 * 86400}, secret
    )


def user_token(user_id: str, secret: str, *, ttl_s: int = 3600, email: str | None = None) -> str:
    """A signed-in user's access token: ``sub`` the user id, role and audience authenticated."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "role": "authenticated",
        "aud": "authenticated",
        "iat": now,
        "exp": now + ttl_s,
    }
    if email is not None:
        claims["email"] = email
    return sign_hs256(claims, secret)
