"""The connections a process uses, built once from settings (and blocks) at the edge.

Tasks ask :func:`get_runtime` for the storage backend and the callback endpoint; nothing inside
reads the environment. Tests and the CLI may install their own with :func:`set_runtime`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeVar, cast

from pydantic import SecretStr

from genjobs.settings import Settings
from genjobs.storage.base import StorageBackend

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
        from genjobs.storage.supabase import SupabaseStorage

        assert settings.supabase_url is not None and settings.supabase_service_key is not None
        return SupabaseStorage.from_supabase(
            settings.supabase_url,
            settings.supabase_service_key,
            timeout=settings.storage_timeout_seconds,
        )
    from genjobs.storage.local import LocalFolderStorage

    return LocalFolderStorage(settings.resolved_storage_root)


B = TypeVar("B")


def _load_block(block_type: type[B], name: str) -> B:
    """Load a saved block synchronously, also when called from inside an event loop."""
    return cast(B, block_type.load(name, _sync=True))  # type: ignore[attr-defined]


def apply_blocks(settings: Settings) -> Settings:
    """Overlay the blocks named in settings (connection facts and secrets) onto them."""
    updates: dict[str, object] = {}
    if settings.supabase_block:
        from blocks.supabase_connection import SupabaseConnection

        supabase = _load_block(SupabaseConnection, settings.supabase_block)
        updates.update(
            supabase_url=supabase.url,
            supabase_service_key=supabase.service_key,
            bucket=supabase.bucket,
            storage_timeout_seconds=supabase.timeout_seconds,
        )
    if settings.callback_block:
        from blocks.job_callback import JobCallbackEndpoint

        endpoint = _load_block(JobCallbackEndpoint, settings.callback_block)
        updates.update(callback_url=endpoint.url, job_callback_secret=endpoint.secret)
        if endpoint.bearer is not None:
            updates["callback_bearer"] = endpoint.bearer
    if settings.models_block:
        from blocks.model_registry import ModelRegistry

        models = _load_block(ModelRegistry, settings.models_block)
        updates.update(
            models.model_dump(
                include={
                    "sdxl_source",
                    "sdxl_scheduler",
                    "wan_source",
                    "wan_vace_source",
                    "dtype",
                    "device",
                    "torch_compile",
                }
            )
        )
    return settings.model_copy(update=updates) if updates else settings


def build_runtime(settings: Settings | None = None) -> Runtime:
    settings = apply_blocks(settings or Settings())
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


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime for this process (``None``: rebuild from settings on next use)."""
    global _current
    _current = runtime
