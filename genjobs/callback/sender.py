"""One delivery attempt of a signed callback, with the answer classified.

Retries are declared on the Prefect task that calls :meth:`CallbackSender.deliver`; this module
only decides what an answer means (contract section 5.4): 2xx delivered, 5xx/429/timeouts and
connection errors transient, any other 4xx permanent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from genjobs.callback.signing import SIGNATURE_HEADER, sign
from genjobs.errors import CallbackRejected, CallbackUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallbackReceipt:
    """An accepted delivery: the HTTP status and the receiver's JSON answer."""

    status_code: int
    answer: dict[str, Any]

    @property
    def skipped(self) -> bool:
        return bool(self.answer.get("skipped"))


class CallbackSender:
    """Signs and POSTs callback bodies to one endpoint."""

    def __init__(
        self,
        url: str,
        secret: SecretStr | None,
        bearer: SecretStr | None,
        client: httpx.AsyncClient,
    ):
        self.url = url
        self._secret = secret
        self._bearer = bearer
        self._client = client

    def headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._bearer is not None:
            headers["Authorization"] = f"Bearer {self._bearer.get_secret_value()}"
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret.get_secret_value(), body)
        return headers

    async def deliver(self, body: bytes) -> CallbackReceipt:
        """POST exactly ``body``; raise CallbackUnavailable (transient) or CallbackRejected."""
        try:
            response = await self._client.post(self.url, content=body, headers=self.headers(body))
        except httpx.TimeoutException as exc:
            raise CallbackUnavailable(f"The callback endpoint timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise CallbackUnavailable(f"The callback endpoint is unreachable: {exc!r}") from exc
        status = response.status_code
        if status >= 500 or status == 429:
            raise CallbackUnavailable(
                f"The callback endpoint answered {status}: {response.text[:200]}"
            )
        if status >= 400:
            raise CallbackRejected(
                f"The callback endpoint refused the callback with {status}: {response.text[:200]}"
            )
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return CallbackReceipt(
            status_code=status, answer=answer if isinstance(answer, dict) else {}
        )


MAX_RETRIES = 50  # Prefect's limit on configured retry delays per task


def retry_delays(
    window_seconds: float, base_seconds: float, cap_seconds: float = 60.0
) -> list[float]:
    """Exponential delays (base, 2 base, 4 base ... capped) whose sum covers the window.

    At most :data:`MAX_RETRIES` delays: when the cap would need more, the last one is stretched
    so the attempts still span the whole window.
    """
    delays: list[float] = []
    delay = base_seconds
    while sum(delays) < window_seconds:
        if len(delays) == MAX_RETRIES - 1:
            delays.append(max(window_seconds - sum(delays), cap_seconds))
            break
        delays.append(min(delay, cap_seconds))
        delay *= 2
    return delays
