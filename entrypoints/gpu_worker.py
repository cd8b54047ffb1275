"""The long-lived GPU worker: one process per GPU keeps its pipelines loaded and renders for
every flow run that hands it a render (``render_dispatch = "gpu_workers"``).

It is a Prefect task worker serving the background render tasks of tasks/render.py. It is an
edge: it reads the settings, loads the blocks they name and builds its own connections (its
``--device`` taking precedence), and serves the renders inside ``serving_with`` (tasks/render.py)
so they use them; a queued render's parameters carry the plan alone. Prefect's
own task worker acknowledges the next queued run while it is still busy, so that run would wait
for this GPU even when another GPU is idle, and would be lost with this process if it died.
:class:`GpuTaskWorker` takes a run from the server's queue only when its GPU is idle or about to
be (genjobs/gpu_schedule.py): it subscribes, receives one run, disconnects, and subscribes again
when it may take another. A run the server sends to a worker that disconnects without
acknowledging it goes back to the head of the queue. The render holds ``GPU_LOCK`` around the
pipeline call, so one pipeline runs at a time while the next job is set up.

Start one per GPU (``genjobs gpu-worker --device cuda:0``, or
``python -m entrypoints.gpu_worker``; see docs/runbook.md). It needs a Prefect server
(``PREFECT_API_URL``): background tasks do not work with the ephemeral API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn
from uuid import UUID

import anyio
from prefect.client.schemas.objects import TaskRun
from prefect.client.subscriptions import Subscription
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import get_current_settings
from prefect.task_worker import StopTaskWorker, TaskWorker

from blocks.connections import load_connections
from genjobs.connections import Connections
from genjobs.gpu_schedule import GPU
from genjobs.jobs.types import Family
from genjobs.prefect_tuning import held_prefect_clients
from genjobs.render.cache import PIPELINES
from genjobs.render.registry import renderer_for
from genjobs.settings import Settings
from tasks.render import GPU_RENDER_TASKS, serving_with, worker_label
from tasks.render_dispatch import HEARTBEAT_EVENT, heartbeat_resource

# Named, not __name__: run as ``python -m entrypoints.gpu_worker`` this module is ``__main__``,
# and its lines would miss the handler serve_from_arguments sets up.
logger = logging.getLogger("entrypoints.gpu_worker")

ALL_FAMILIES: tuple[Family, ...] = ("sdxl", "wan")
SUBSCRIPTION_PATH = "/task_runs/subscriptions/scheduled"
EXIT_DRAIN_SECONDS = 2.0


class GpuTaskWorker(TaskWorker):
    """A task worker for one GPU: one pipeline at a time (tasks/render.py holds GPU_LOCK),
    a run taken from the queue only when this GPU is idle or about to be (``prefetch_seconds``
    before the current render ends), so at most two runs are held: one rendering, one set up."""

    def __init__(
        self, *tasks: Any, prefetch_seconds: float = 2.0, heartbeat_seconds: float = 10.0
    ) -> None:
        super().__init__(*tasks, limit=2)
        self.prefetch_seconds = prefetch_seconds
        self.heartbeat_seconds = heartbeat_seconds

    def handle_sigterm(self, signum: int, frame: object) -> None:
        """Stop at once, with exit status 0, and say so. A render this process held stops with
        it, and its flow submits it again (``render_stall_seconds``).

        Nothing is raised here. Prefect's own handler raises out of whatever the main thread
        was running, and the task worker swallows it where that was the decoding of a received
        run's parameters (the process then went on serving). The exit is handed to the event
        loop instead, which runs it between two callbacks.
        """
        self.stopping = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs in this thread: nothing to wait for
            _exit_after_sigterm()
        loop.call_soon_threadsafe(_exit_after_sigterm)

    def _may_take(self) -> bool:
        free = self._limiter is None or self._limiter.available_tokens >= 1
        return free and GPU.may_take_next(self.prefetch_seconds)

    async def _subscribe_to_task_scheduling(self) -> None:
        base_url = get_current_settings().api.url
        if base_url is None:
            raise ValueError(
                "PREFECT_API_URL must name a Prefect server: GPU workers do not work with "
                "the ephemeral API."
            )
        logger.info("Waiting for renders (task keys %s).", ", ".join(sorted(self.task_keys)))
        while not self.stopping:
            while not self._may_take():
                await anyio.sleep(0.01)
            task_run = await self._receive_one(base_url)
            logger.info("Received render %s (%s).", task_run.name, task_run.id)
            GPU.claim(task_run.id)
            if await self._acquire_token(task_run.id):
                assert self._runs_task_group is not None
                self._runs_task_group.start_soon(self._run_then_release, task_run)
            else:
                GPU.release(task_run.id)

    async def _run_then_release(self, task_run: TaskRun) -> None:
        async with anyio.create_task_group() as heartbeat:
            heartbeat.start_soon(self._beat, task_run.id)
            try:
                await self._safe_submit_scheduled_task_run(task_run)
            finally:
                heartbeat.cancel_scope.cancel()
                GPU.release(task_run.id)  # also when the run never reached the GPU

    async def _beat(self, task_run_id: UUID) -> None:
        """Tell the flow that this render is alive while this process holds it: a flow whose
        render's heartbeats stop submits it again (tasks/render_dispatch.py)."""
        while True:
            emit_event(event=HEARTBEAT_EVENT, resource=heartbeat_resource(task_run_id))
            await anyio.sleep(self.heartbeat_seconds)

    async def _receive_one(self, base_url: str) -> TaskRun:
        """Subscribe, take one run (acknowledged), and disconnect before the next arrives."""
        subscription: Subscription[TaskRun] = Subscription(
            model=TaskRun,
            path=SUBSCRIPTION_PATH,
            keys=self.task_keys,
            client_id=self.client_id,
            base_url=base_url,
        )
        try:
            return await subscription.__anext__()
        finally:
            try:
                await subscription.websocket.close()
            except Exception:  # not connected, or already closed by the server
                logger.debug("The task subscription was already closed.")


def _exit_after_sigterm() -> NoReturn:
    """Say why, send what Prefect's services still hold (at most a few seconds), and exit 0."""
    logger.info("GPU worker stopped by SIGTERM.")
    for service in (EventsWorker, APILogWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=EXIT_DRAIN_SECONDS)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def gpu_connections(device: str) -> Connections:
    """This worker's connections (settings and blocks), its device taking precedence."""
    connections = load_connections(Settings())
    update: dict[str, Any] = {"home": connections.settings.home.resolve()}  # frame paths absolute
    if device != "auto":
        update["device"] = device
    settings = connections.settings.model_copy(update=update)
    return dataclasses.replace(connections, settings=settings)


def warm_up(connections: Connections, families: Sequence[Family]) -> float:
    """Load the pipelines of ``families`` now, so the first job does not pay for it."""
    started = time.perf_counter()
    for family in families:
        renderer = renderer_for(family, connections.settings)
        load = getattr(renderer, "pipelines", None)
        if callable(load):
            load()
    seconds = time.perf_counter() - started
    logger.info(
        "Warmed up %s on %s in %.1f s (%d pipeline load(s)).",
        ", ".join(families),
        connections.settings.device,
        seconds,
        PIPELINES.load_count(),
    )
    return seconds


async def aserve_gpu_worker(
    device: str = "auto",
    *,
    families: Sequence[Family] = ALL_FAMILIES,
    warm: bool = True,
    timeout: float | None = None,
) -> None:
    """Serve the render tasks of ``families`` on ``device`` until stopped (or ``timeout``)."""
    unknown = [f for f in families if f not in GPU_RENDER_TASKS]
    if unknown or not families:
        raise ValueError(f"Families must be some of {', '.join(ALL_FAMILIES)}, got {families!r}")
    connections = gpu_connections(device)
    settings = connections.settings
    if warm:
        await asyncio.to_thread(warm_up, connections, families)
    worker = GpuTaskWorker(
        *(GPU_RENDER_TASKS[f] for f in families),
        prefetch_seconds=settings.gpu_prefetch_seconds,
        heartbeat_seconds=settings.render_heartbeat_seconds,
    )
    logger.info(
        "GPU worker %s serves %s renders, one at a time.",
        worker_label(settings),
        ", ".join(families),
    )
    try:
        # Every render reuses one async and one sync client (each new one reads the CA bundle:
        # measured 0.1 s of each render's set-up, half of it before the render starts).
        async with held_prefect_clients():
            with serving_with(connections):
                await worker.astart(timeout=timeout)
    except* (StopTaskWorker, TimeoutError):
        logger.info("GPU worker %s stopped.", worker_label(settings))


def serve_gpu_worker(
    device: str = "auto",
    *,
    families: Sequence[Family] = ALL_FAMILIES,
    warm: bool = True,
    timeout: float | None = None,
) -> None:
    """Run a GPU worker in this process until it is stopped (SIGTERM, Ctrl-C) or times out.

    Args:
        device: ``cuda:N`` for one GPU (one worker per GPU), ``cpu``, or ``auto``. Overrides the
            device of the settings and of the model registry block.
        families: Which renders to take: ``("sdxl",)``, ``("wan",)`` or both (one queue each).
        warm: Load the families' pipelines before taking the first job.
        timeout: Stop after this many seconds (tests); ``None`` runs until stopped.
    """
    try:
        asyncio.run(aserve_gpu_worker(device, families=families, warm=warm, timeout=timeout))
    except KeyboardInterrupt:
        logger.info("GPU worker interrupted.")


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The GPU worker's options, shared by ``python -m entrypoints.gpu_worker`` and ``genjobs``."""
    parser.add_argument("--device", default="auto", help="cuda:N, cpu or auto (default auto)")
    parser.add_argument(
        "--families", default="sdxl,wan", help="sdxl, wan or sdxl,wan (default sdxl,wan)"
    )
    parser.add_argument("--no-warm", action="store_true", help="load models on first use")


def serve_from_arguments(args: argparse.Namespace) -> int:
    """Serve with parsed :func:`add_worker_arguments` options, logging to stderr."""
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
    )
    for name in ("genjobs", "tasks", "entrypoints"):
        package_logger = logging.getLogger(name)
        package_logger.setLevel(logging.INFO)
        package_logger.addHandler(handler)
        package_logger.propagate = False
    serve_gpu_worker(args.device, families=families, warm=not args.no_warm)  # type: ignore[arg-type]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m entrypoints.gpu_worker --device cuda:0 [--families sdxl,wan] [--no-warm]``."""
    parser = argparse.ArgumentParser(prog="python -m entrypoints.gpu_worker", description=__doc__)
    add_worker_arguments(parser)
    return serve_from_arguments(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
