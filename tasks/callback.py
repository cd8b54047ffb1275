"""Deliver the signed callback; what cannot be delivered waits in the durable outbox."""

from __future__ import annotations

import asyncio

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from genjobs.callback.outbox import Outbox
from genjobs.callback.payload import CallbackPayload, serialise
from genjobs.callback.sender import CallbackReceipt, CallbackSender, retry_delays
from genjobs.connections import CallbackTarget
from genjobs.errors import CallbackUnavailable, ErrorCode, JobError
from genjobs.settings import Settings
from genjobs.tls import ssl_context
from tasks.naming import run_name
from tasks.retries import retry_if_transient
from tasks.run_logger import run_logger


def sender_for(callback: CallbackTarget, client: httpx.AsyncClient) -> CallbackSender:
    if not callback.url:
        raise JobError(
            "No callback URL is configured (GENJOBS_CALLBACK_URL or SUPABASE_URL)",
            code=ErrorCode.CALLBACK_NOT_CONFIGURED,
        )
    return CallbackSender(callback.url, callback.secret, callback.bearer, client)


@task(
    name="send-callback",
    cache_policy=NO_CACHE,
    task_run_name=run_name("callback"),
    retry_condition_fn=retry_if_transient,  # how often: the callback window, tasks/retries.py
)
async def send_callback(
    job_id: str, status: str, body: bytes, callback: CallbackTarget, timeout_seconds: float
) -> CallbackReceipt:
    """POST the exact ``body`` to ``callback`` once per attempt (``timeout_seconds`` each);
    retries cover 5xx, 429, timeouts, resets."""
    async with httpx.AsyncClient(timeout=timeout_seconds, verify=ssl_context()) as client:
        receipt = await sender_for(callback, client).deliver(body)
    logger = run_logger(__name__)
    if receipt.skipped:
        logger.warning(
            "The backend skipped the %s callback of job %s (unknown or already terminal job).",
            status,
            job_id,
        )
    else:
        logger.info("The backend accepted the %s callback of job %s.", status, job_id)
    return receipt


async def deliver_callback(
    payload: CallbackPayload,
    callback: CallbackTarget,
    settings: Settings,
    *,
    orchestrated: bool = True,
) -> CallbackReceipt:
    """Serialise once, deliver to ``callback`` with retries over the window ``settings`` name
    (``callback_retry_*``, ``callback_timeout_seconds``), else keep in the outbox
    (``outbox_dir``).

    ``orchestrated=False`` retries in this process instead of through a Prefect task run: for a
    state hook that found the Prefect API unreachable (a task run cannot start without it).
    """
    body = serialise(payload)
    delays = retry_delays(
        settings.callback_retry_window_seconds,
        settings.callback_retry_base_seconds,
        settings.callback_retry_cap_seconds,
    )
    try:
        if orchestrated:
            sender = send_callback.with_options(
                retries=len(delays), retry_delay_seconds=delays, retry_jitter_factor=0.5
            )
            return await sender(
                payload.job_id, payload.status, body, callback, settings.callback_timeout_seconds
            )
        return await _send_with_retries(
            payload.job_id,
            payload.status,
            body,
            delays,
            callback=callback,
            timeout_seconds=settings.callback_timeout_seconds,
        )
    except CallbackUnavailable:
        Outbox(settings.outbox_dir).put(payload.job_id, payload.status, body)
        run_logger(__name__).error(
            "The %s callback of job %s could not be delivered within %.0f s; it waits in the "
            "outbox for a later re-send.",
            payload.status,
            payload.job_id,
            settings.callback_retry_window_seconds,
        )
        raise


async def _send_with_retries(
    job_id: str,
    status: str,
    body: bytes,
    delays: list[float],
    *,
    callback: CallbackTarget,
    timeout_seconds: float,
) -> CallbackReceipt:
    """:func:`send_callback`'s body, retried after each delay while the endpoint is unavailable."""
    for delay in delays:
        try:
            return await send_callback.fn(job_id, status, body, callback, timeout_seconds)
        except CallbackUnavailable as exc:
            run_logger(__name__).warning(
                "The %s callback of job %s was not delivered (%s); trying again in %.1f s.",
                status,
                job_id,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
    return await send_callback.fn(job_id, status, body, callback, timeout_seconds)
