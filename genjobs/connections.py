"""What a process talks to, built once at its edge and passed inward as arguments.

:class:`Connections` holds the settings in force, the storage backend and the callback
endpoint. An edge (the flow entry, the CLI, the GPU worker, a benchmark) builds one, from the
environment alone with :func:`connections_from_settings` or with the Prefect blocks the settings
name laid over it (``blocks.connections.load_connections``), and hands it, or the part a task
uses, to the tasks it calls. Nothing below the edges reads the environment or a global.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import SecretStr

from genjobs.settings import Settings
from genjobs.storage.base import StorageBackend
from genjobs.storage.local import LocalFolderStorage
from genjobs.storage.supabase import SupabaseStorage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallbackTarget:
    """Where the job-callback POSTs go and how they are signed and authorised."""

    url: str | None
    secret: SecretStr | None
    bearer: SecretStr | None


@dataclass(frozen=True)
class Connections:
    """The settings in force, the storage backend and the callback endpoint of one edge."""

    settings: Settings
    storage: StorageBackend
    callback: CallbackTarget

    @property
    def storage_name(self) -> str:
        return type(self.storage).__name__


def storage_from_settings(settings: Settings) -> StorageBackend:
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


def callback_from_settings(settings: Settings) -> CallbackTarget:
    """The callback endpoint the settings name (the gateway bearer defaults to the service key)."""
    return CallbackTarget(
        url=settings.resolved_callback_url,
        secret=settings.job_callback_secret,
        bearer=settings.callback_bearer or settings.supabase_service_key,
    )


def connections_from_settings(settings: Settings) -> Connections:
    """The connections of ``settings`` as they stand (blocks already laid over them, if any)."""
    try:
        settings.ensure_home()  # before anything writes under it with default modes
    except OSError as exc:
        logger.warning("The local state folder %s could not be created: %s", settings.home, exc)
    connections = Connections(
        settings=settings,
        storage=storage_from_settings(settings),
        callback=callback_from_settings(settings),
    )
    logger.info(
        "Using %s storage and the callback endpoint %s.",
        connections.storage_name,
        connections.callback.url or "(none configured)",
    )
    return connections
