"""Signing, delivery over real HTTP to the local receiver, and the outbox."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import SecretStr

from genjobs.callback.outbox import Outbox
from genjobs.callback.payload import CallbackPayload, failure_payload, serialise
from genjobs.callback.sender import CallbackSender, retry_delays
from genjobs.callback.signing import sign, verify
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.errors import CallbackRejected, CallbackUnavailable, UnsupportedJobType

JOB = "5b0c1f4e-1d2a-4c3b-9a8e-7f6d5c4b3a21"


def test_signature_is_lowercase_hex_hmac_sha256_of_the_exact_bytes() -> None:
    # Known answer: HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog").
    body = b"The quick brown fox jumps over the lazy dog"
    assert sign("key", body) == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )
    assert verify("key", body, sign("key", body))
    assert not verify("key", body + b" ", sign("key", body))
    assert not verify("other", body, sign("key", body))


def test_failure_payload_carries_message_type_code_and_retryability() -> None:
    payload = failure_payload(JOB, UnsupportedJobType("Job type x is not supported"))
    assert json.loads(serialise(payload)) == {
        "job_id": JOB,
        "status": "failed",
        "error_message": "Job type x is not supported",
        "assets": [],
        "metadata": {
            "error_type": "UnsupportedJobType",
            "error_code": "UNSUPPORTED_JOB_TYPE",
            "retryable": False,
        },
    }


def test_unexpected_errors_get_the_internal_error_code() -> None:
    payload = failure_payload(JOB, KeyError("boom"))
    assert payload.metadata["error_code"] == "INTERNAL_ERROR"
    assert payload.error_message == "KeyError: Internal processing error"


async def test_receiver_accepts_the_signed_bytes_and_refuses_a_tampered_body(
    receiver: CallbackReceiver, callback_secret: str
) -> None:
    body = serialise(CallbackPayload(job_id=JOB, status="failed", error_message="x"))
    async with httpx.AsyncClient() as client:
        sender = CallbackSender(receiver.url, SecretStr(callback_secret), SecretStr("jwt"), client)
        receipt = await sender.deliver(body)
        assert receipt.status_code == 200 and not receipt.skipped
        tampered = body.replace(b'"x"', b'"y"')
        response = await client.post(receiver.url, content=tampered, headers=sender.headers(body))
        assert response.status_code == 401
    sent = receiver.requests[0]
    assert sent.body == body
    assert sent.headers["X-Callback-Signature"] == sign(callback_secret, body)
    assert sent.headers["Authorization"] == "Bearer jwt"
    assert receiver.job(JOB)["status"] == "failed"  # type: ignore[index]


async def test_answers_are_classified(receiver: CallbackReceiver, callback_secret: str) -> None:
    body = serialise(CallbackPayload(job_id=JOB, status="failed", error_message="x"))
    async with httpx.AsyncClient() as client:
        good = CallbackSender(receiver.url, SecretStr(callback_secret), None, client)
        receiver.fail_next(1, status=503)
        with pytest.raises(CallbackUnavailable):
            await good.deliver(body)
        receiver.fail_next(1, status=429)
        with pytest.raises(CallbackUnavailable):
            await good.deliver(body)
        bad = CallbackSender(receiver.url, SecretStr("wrong"), None, client)
        with pytest.raises(CallbackRejected, match="401"):
            await bad.deliver(body)
        dead = CallbackSender("http://127.0.0.1:9/cb", SecretStr(callback_secret), None, client)
        with pytest.raises(CallbackUnavailable, match="unreachable"):
            await dead.deliver(body)


async def test_terminal_jobs_and_unknown_jobs_are_skipped(callback_secret: str) -> None:
    with CallbackReceiver(callback_secret, strict_jobs=True) as strict:
        async with httpx.AsyncClient() as client:
            sender = CallbackSender(strict.url, SecretStr(callback_secret), None, client)
            body = serialise(CallbackPayload(job_id=JOB, status="failed", error_message="x"))
            assert (await sender.deliver(body)).skipped
            strict.register_job(JOB, "u", status="completed")
            assert (await sender.deliver(body)).skipped
            strict.register_job(JOB, "u", status="queued")
            assert not (await sender.deliver(body)).skipped


def test_retry_delays_stay_within_prefects_limit_and_still_cover_the_window() -> None:
    delays = retry_delays(3600, 1, cap_seconds=4)
    assert len(delays) == 50 and sum(delays) >= 3600


def test_retry_delays_grow_to_a_cap_and_cover_the_window() -> None:
    delays = retry_delays(600, 2, cap_seconds=60)
    assert delays[:5] == [2, 4, 8, 16, 32] and max(delays) == 60
    assert sum(delays) >= 600 and sum(delays[:-1]) < 600


def test_outbox_keeps_exact_bytes_one_entry_per_job_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    outbox = Outbox(tmp_path)
    outbox.put(JOB, "completed", b"one")
    outbox.put(JOB, "completed", b"two")
    outbox.put(JOB, "failed", b"\x00raw")
    entries = {(e.job_id, e.status): e for e in Outbox(tmp_path).entries()}
    assert {k: e.body for k, e in entries.items()} == {
        (JOB, "completed"): b"two",
        (JOB, "failed"): b"\x00raw",
    }
    outbox.remove(entries[JOB, "failed"].key)
    assert [e.status for e in outbox.entries()] == ["completed"]
