"""Typed settings read from the environment (prefix ``GENJOBS_``).

The predecessor's names keep working: ``SUPABASE_URL``, ``SUPABASE_SERVICE_KEY`` and
``JOB_CALLBACK_SECRET``. With none of them set the embedded default is used: a local storage
folder, a local callback receiver and the tiny embedded models.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from genjobs.storage.limits import RESUMABLE_UPLOAD_THRESHOLD

logger = logging.getLogger(__name__)

DEFAULT_HOME = Path(".genjobs")
PRIVATE_DIR_MODE = 0o700
"""Mode of the folders this system creates for its local state: the owner alone."""
PRIVATE_FILE_MODE = 0o600
"""Mode of the files that hold callback bodies or job records: the owner alone."""


def make_private_dir(folder: Path) -> Path:
    """Create ``folder`` and its missing parents with mode 0700; existing folders stay as they are.

    ``Path.mkdir(parents=True)`` gives the parents the default mode, so each missing level is
    created here, outermost first.
    """
    folder = Path(folder)
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by another process: not ours to change
        os.chmod(level, PRIVATE_DIR_MODE)  # mkdir's mode is narrowed by the umask
    return folder


class Settings(BaseSettings):
    """Connection facts, secrets and knobs. Read once at the edge, passed inward as arguments."""

    model_config = SettingsConfigDict(env_prefix="GENJOBS_", extra="ignore", populate_by_name=True)

    home: Path = Field(default=DEFAULT_HOME, description="Folder for local state.")
    supabase_url: str | None = Field(
        default=None, validation_alias=AliasChoices("GENJOBS_SUPABASE_URL", "SUPABASE_URL")
    )
    supabase_service_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("GENJOBS_SUPABASE_SERVICE_KEY", "SUPABASE_SERVICE_KEY"),
    )
    job_callback_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("GENJOBS_JOB_CALLBACK_SECRET", "JOB_CALLBACK_SECRET"),
    )
    callback_bearer: SecretStr | None = Field(
        default=None, description="Gateway bearer token; defaults to the service key."
    )
    callback_url: str | None = Field(
        default=None, description="Defaults to {SUPABASE_URL}/functions/v1/job-callback."
    )
    supabase_block: str | None = Field(
        default=None, description="Name of a SupabaseConnection block to use instead."
    )
    callback_block: str | None = Field(
        default=None, description="Name of a JobCallbackEndpoint block to use instead."
    )
    models_block: str | None = Field(
        default=None, description="Name of a ModelRegistry block to use instead."
    )
    bucket: str = "workspace-temp"
    database_dsn: SecretStr | None = Field(
        default=None,
        description="PostgreSQL DSN of the project database (cleanup rows, legacy video ids).",
    )
    storage_root: Path | None = Field(
        default=None, description="Local storage folder; defaults to {home}/storage."
    )
    storage_timeout_seconds: float = 60.0
    resumable_upload_threshold_bytes: int = Field(
        default=RESUMABLE_UPLOAD_THRESHOLD,
        ge=1,
        description="Objects larger than this go to Supabase Storage through a resumable "
        "(TUS) upload in chunks, smaller ones in one standard request.",
    )
    callback_timeout_seconds: float = 30.0
    callback_retry_window_seconds: float = 900.0
    callback_retry_base_seconds: float = 2.0
    callback_retry_cap_seconds: float = 60.0
    storage_retries: int = Field(
        default=4,
        validation_alias=AliasChoices("GENJOBS_STORAGE_RETRIES", "GENJOBS_UPLOAD_RETRIES"),
        description="How often a storage task (upload, listing, hash check, removal) is retried "
        "after a transient failure.",
    )
    storage_retry_base_seconds: float = Field(
        default=1.0,
        validation_alias=AliasChoices(
            "GENJOBS_STORAGE_RETRY_BASE_SECONDS", "GENJOBS_UPLOAD_RETRY_BASE_SECONDS"
        ),
        description="First delay between storage task attempts; each next one doubles.",
    )
    database_retries: int = Field(
        default=2, description="How often a database task is retried after a transient failure."
    )
    database_retry_base_seconds: float = Field(
        default=1.0, description="First delay between database task attempts; each next doubles."
    )
    reference_timeout_seconds: float = 30.0
    reference_max_bytes: int = 25 * 1024 * 1024
    reference_allow_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="'host' or 'host:port' entries a reference URL may name although not "
        "public; comma-separated ('127.0.0.1:18765,storage.lan') or a JSON list.",
    )

    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    sdxl_source: str | None = Field(
        default=None, description="Folder, .safetensors checkpoint or hub id; none: embedded."
    )
    sdxl_scheduler: str = "EulerDiscreteScheduler"
    wan_source: str | None = Field(default=None, description="Folder or hub id; none: embedded.")
    wan_vace_source: str | None = Field(
        default=None, description="VACE transformer folder or hub id for WAN reference frames."
    )
    model_cache: Path | None = Field(
        default=None, description="Folder for the embedded models; defaults to {home}/models."
    )
    torch_compile: bool = False
    png_compress_level: int = Field(default=1, ge=0, le=9)

    # Where renders run (docs/deployment.md): in the flow's own process, or on the warm GPU
    # workers (entrypoints/gpu_worker.py) through Prefect's background-task queue.
    render_dispatch: Literal["in_process", "gpu_workers"] = Field(
        default="in_process",
        description="'in_process' renders in the flow run's process; 'gpu_workers' hands the "
        "render to the GPU task workers, which keep their models loaded.",
    )
    render_ahead: bool = Field(
        default=True,
        description="The project's worker (genjobs-process) queues a generation run's render "
        "on the GPU workers as it takes the run, before the run's process starts "
        "(tasks/render_ahead.py); false leaves the render to the run. Read by the worker.",
    )
    render_queue_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How long a dispatched render may wait unstarted before it is presumed "
        "lost (server restart, crashed worker) and submitted again.",
    )
    render_run_timeout_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="How long a started render may run before it is presumed stuck and "
        "submitted again.",
    )
    render_stall_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a started render's GPU worker may send no heartbeat before the "
        "render is presumed lost (its worker died) and submitted again.",
    )
    render_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often a GPU worker tells the flows that the renders it holds are "
        "alive; keep it well under render_stall_seconds.",
    )
    render_poll_seconds: float = Field(
        default=5.0, gt=0, description="How often a flow checks on a dispatched render."
    )
    render_resubmits: int = Field(
        default=2, ge=0, description="How many times a lost or stuck render is submitted again."
    )
    gpu_prefetch_seconds: float = Field(
        default=2.0,
        ge=0,
        description="A GPU worker takes its next job this long before the current render is "
        "expected to end, so the next set-up overlaps it; 0 takes jobs only when idle.",
    )
    cancel_check_seconds: float = Field(
        default=1.5,
        ge=0,
        description="Least time between two checks, during a render, of whether the job's flow "
        "run was cancelled.",
    )
    progress_update_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Least time between two render progress artifact updates; the artifact "
        "is created at the first, so a shorter render has none (0: from the start).",
    )
    artifact_preview_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="Lifetime of the signed thumbnail links in a job's preview artifact "
        "(Supabase storage only); 0 publishes no previews.",
    )
    renderer_class: str | None = Field(
        default=None,
        description="'module:Class' of a renderer that serves every family instead of the "
        "built-in ones (load tests and benchmarks); called as Class(family, settings).",
    )

    def ensure_home(self) -> Path:
        """Create the local state folder (mode 0700) unless it exists; warn when others may
        read an existing one (it holds undelivered callbacks and the local receiver's rows)."""
        home = make_private_dir(self.home)
        shared = home.stat().st_mode & 0o077
        if shared:
            logger.warning(
                "The local state folder %s is open to other users (mode %o); "
                "chmod 700 it to keep undelivered callbacks private.",
                home,
                home.stat().st_mode & 0o777,
            )
        return home

    @field_validator("reference_allow_hosts", mode="before")
    @classmethod
    def _split_host_list(cls, value: Any) -> Any:
        """Read ``a,b`` (as the docs write it) or a JSON list; blanks are dropped."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError(
                    f"must be a comma-separated list of host or host:port entries, or a JSON "
                    f"list of them, got {value!r}"
                ) from None
        return tuple(entry.strip() for entry in text.split(",") if entry.strip())

    @property
    def uses_supabase_storage(self) -> bool:
        return bool(self.supabase_url and self.supabase_service_key)

    @property
    def resolved_callback_url(self) -> str | None:
        if self.callback_url:
            return self.callback_url
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/functions/v1/job-callback"
        return None

    @property
    def resolved_storage_root(self) -> Path:
        return self.storage_root or self.home / "storage"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def model_dir(self) -> Path:
        return self.model_cache or self.home / "models"

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"
