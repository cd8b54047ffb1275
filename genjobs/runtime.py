"""The connections a process uses, built once from settings (and blocks) at the edge.

Everything a build may need is imported with this module, at process start-up, so a deployed
flow run spends none of its own time importing the block classes or the Supabase client.

Tasks ask :func:`get_runtime` for the storage backend and the callback endpoint; nothing inside
reads the environment. Tests and the CLI may install their own with :func:`set_runtime`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from blocks.job_callback import JobCallbackEndpoint
from blocks.model_registry import ModelRegistry
from blocks.supabase_connection import SupabaseConnection
from genjobs.settings import Settings
from genjobs.storage.base import StorageBackend
from genjobs.storage.local import LocalFolderStorage
from genjobs.storage.supabase import SupabaseStorage

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    storage: StorageBackend
    callback_url: str | None
    callback_secret: SecretStr | None
    callback_bearer: SecretStr | None

    @property
    def storage_name(self) -> str:
        return type(self.storage).__name__


def build_storage(settings: Settings) -> StorageBackend:
    """Supabase when a URL and service key are configured, else the local folder."""
    if settings.uses_supabase_storage:
        assert settings.supabase_url is not None and settings.supabase_service_key is not None
        return SupabaseStorage.from_supabase(
            settings.supabase_url,
            settings.supabase_service_key,
            timeout=settings.storage_timeout_seconds,
            resumable_upload_threshold_bytes=settings.resumable_upload_threshold_bytes,
        )
    return LocalFolderStorage(settings.resolved_storage_root)


MODEL_FIELDS = {
    "sdxl_source",
    "sdxl_scheduler",
    "wan_source",
    "wan_vace_source",
    "dtype",
    "device",
    "torch_compile",
}
"""What a ModelRegistry block sets."""


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
    """The settings with the loaded blocks' connection facts and secrets laid over them."""
    updates: dict[str, object] = {}
    if supabase := loaded.get("supabase"):
        updates.update(
            supabase_url=supabase.url,
            supabase_service_key=supabase.service_key,
            bucket=supabase.bucket,
            storage_timeout_seconds=supabase.timeout_seconds,
        )
    if endpoint := loaded.get("callback"):
        updates.update(callback_url=endpoint.url, job_callback_secret=endpoint.secret)
        if endpoint.bearer is not None:
            updates["callback_bearer"] = endpoint.bearer
    if models := loaded.get("models"):
        updates.update(models.model_dump(include=MODEL_FIELDS))
    return settings.model_copy(update=updates) if updates else settings


def apply_blocks(settings: Settings, renders: bool = True) -> Settings:
    """Overlay the blocks named in settings (connection facts and secrets) onto them; the
    model registry's sources only where ``renders``.

    Synchronous, also when called from inside an event loop; the blocks share one client.
    """
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


def build_runtime(settings: Settings | None = None, renders: bool = True) -> Runtime:
    """The runtime of ``settings`` (default: the environment's) with its blocks applied.

    ``renders=False`` (a flow process whose renders run on the GPU workers) skips the model
    registry: such a process never loads a pipeline, so a job does not wait for that block.
    """
    return _assemble(apply_blocks(settings or Settings(), renders))


async def abuild_runtime(settings: Settings | None = None, renders: bool = True) -> Runtime:
    """:func:`build_runtime` for async code."""
    return _assemble(await aapply_blocks(settings or Settings(), renders))


def _assemble(settings: Settings) -> Runtime:
    try:
        settings.ensure_home()  # before anything writes under it with default modes
    except OSError as exc:
        logger.warning("The local state folder %s could not be created: %s", settings.home, exc)
    runtime = Runtime(
        settings=settings,
        storage=build_storage(settings),
        callback_url=settings.resolved_callback_url,
        callback_secret=settings.job_callback_secret,
        callback_bearer=settings.callback_bearer or settings.supabase_service_key,
    )
    logger.info(
        "Using %s storage and the callback endpoint %s.",
        runtime.storage_name,
        runtime.callback_url or "(none configured)",
    )
    return runtime


_current: Runtime | None = None


def get_runtime() -> Runtime:
    global _current
    if _current is None:
        _current = build_runtime()
    return _current


async def aget_runtime() -> Runtime:
    """:func:`get_runtime` for async code: a flow's first call builds it with
    :func:`abuild_runtime` (its blocks loaded at once on the run's client), without the model
    registry when the settings send renders to the GPU workers."""
    global _current
    if _current is None:
        settings = Settings()
        _current = await abuild_runtime(settings, renders=settings.render_dispatch != "gpu_workers")
    return _current


def current_settings() -> Settings:
    """The settings in force, without loading blocks or building clients: the installed
    runtime's, else the environment's. Blocks set only connections, secrets and model sources,
    so what validation reads (limits, allowed hosts) is the same in both."""
    return _current.settings if _current is not None else Settings()


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime for this process (``None``: rebuild from settings on next use)."""
    global _current
    _current = runtime
