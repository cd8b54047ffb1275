"""Re-send callbacks that waited in the outbox; each entry is removed only once accepted."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.connections import aload_connections
from flows.entry_settings import entry_settings
from genjobs.callback.outbox import Outbox
from genjobs.errors import CallbackRejected, CallbackUnavailable
from tasks.callback import send_callback


@flow(name="redeliver-callbacks")
async def redeliver_callbacks() -> dict[str, int]:
    """Deliver every outbox entry once more (one attempt each; the schedule is the retry)."""
    logger = get_run_logger()
    connections = await aload_connections(entry_settings(), renders=False)
    settings = connections.settings
    outbox = Outbox(settings.outbox_dir)
    counts = {"delivered": 0, "waiting": 0, "rejected": 0}
    once = send_callback.with_options(retries=0)
    for entry in outbox.entries():
        try:
            await once(
                entry.job_id,
                entry.status,
                entry.body,
                connections.callback,
                settings.callback_timeout_seconds,
            )
        except CallbackUnavailable:
            counts["waiting"] += 1
            continue
        except CallbackRejected as exc:
            counts["rejected"] += 1
            logger.error(
                "The %s callback of job %s was refused (%s); it stays in the outbox "
                "for an operator.",
                entry.status,
                entry.job_id,
                exc,
            )
            continue
        outbox.remove(entry.key)
        counts["delivered"] += 1
    logger.info(
        "Outbox: %(delivered)d delivered, %(waiting)d still waiting, %(rejected)d refused.", counts
    )
    return counts
