"""Build an edge's :class:`~genjobs.connections.Connections` from the blocks its settings name.

The blocks hold connection facts and secrets (blocks/supabase_connection.py,
blocks/job_callback.py) and model sources (blocks/model_registry.py); each lays its own values
over the settings, then the connections are built from the result. A setting that names no
block leaves the environment's values in force.
"""

from __future__ import annotations

import asyncio
from typing import Any

from blocks.job_callback import JobCallbackEndpoint
from blocks.model_registry import ModelRegistry
from blocks.supabase_connection import SupabaseConnection
from genjobs.connections import Connections, connections_from_settings
from genjobs.settings import Settings


def _named_blocks(settings: Settings, renders: bool) -> dict[str, tuple[type[Any], str]]:
    """The blocks the settings name: role -> (block class, saved name). The model registry
    only where this process renders."""
    named = {
        "supabase": (SupabaseConnection, settings.supabase_block),
        "callback": (JobCallbackEndpoint, settings.callback_block),
        "models": (ModelRegistry, settings.models_block if renders else None),
    }
    return {role: (cls, name) for role, (cls, name) in named.items() if name}


def _overlay(settings: Settings, loaded: dict[str, Any]) -> Settings:
    """The settings with each loaded block's own values laid over them."""
    for block in loaded.values():
        settings = block.apply_to(settings)
    return settings


def apply_blocks(settings: Settings, renders: bool = True) -> Settings:
    """Overlay the blocks named in settings onto them; the model registry only where
    ``renders``. Synchronous, also when called from inside an event loop; the blocks share
    one client."""
    named = _named_blocks(settings, renders)
    if not named:
        return settings
    from prefect.context import SyncClientContext

    with SyncClientContext.get_or_create():
        loaded = {role: cls.load(name, _sync=True) for role, (cls, name) in named.items()}
    return _overlay(settings, loaded)


async def aapply_blocks(settings: Settings, renders: bool = True) -> Settings:
    """:func:`apply_blocks` for async code: the blocks load at once, on the caller's client
    (inside a flow run, the run's own: no new connection or TLS context)."""
    named = _named_blocks(settings, renders)
    if not named:
        return settings
    values = await asyncio.gather(*(cls.aload(name) for cls, name in named.values()))
    return _overlay(settings, dict(zip(named, values, strict=True)))


def load_connections(settings: Settings, renders: bool = True) -> Connections:
    """The connections of ``settings`` (read by the caller, an edge) with their blocks applied.

    ``renders=False`` (a flow process whose renders run on the GPU workers) skips the model
    registry: such a process never loads a pipeline, so a job does not wait for that block.
    """
    return connections_from_settings(apply_blocks(settings, renders))


async def aload_connections(settings: Settings, renders: bool = True) -> Connections:
    """:func:`load_connections` for async code."""
    return connections_from_settings(await aapply_blocks(settings, renders))
