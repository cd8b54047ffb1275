"""Secrets never reach logs, artifacts, parameters or results: run jobs with recognisable
secrets against the real storage server and scan everything Prefect recorded, and Python's log
records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from flows.generate import generate_job
from genjobs.devserver.receiver import CallbackReceiver
from tests.conftest import make_settings
from tests.flows.helpers import sdxl_job
from tests.real_storage import RealStorage
from tests.settings_env import install_settings

pytestmark = pytest.mark.usefixtures("prefect_api")


async def recorded_text(flow_run_id: object) -> str:
    """Everything the Prefect API holds about a flow run, as one string."""
    await APILogHandler.aflush()  # logs reach the API in batches; send what is queued
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))  # type: ignore[list-item]
        task_runs = await client.read_task_runs(flow_run_filter=runs)
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )  # type: ignore[list-item]
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )  # type: ignore[list-item]
    parts = [flow_run.model_dump_json()]
    parts += [run.model_dump_json() for run in task_runs]
    parts += [log.message for log in logs]
    parts += [artifact.model_dump_json() for artifact in artifacts]
    assert logs and artifacts is not None
    return "\n".join(parts)


async def test_secrets_stay_out_of_logs_artifacts_parameters_and_results(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    real_storage: RealStorage,
    real_bucket: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service_key = real_storage.service_key
    jpeg_only = real_storage.create_bucket(allowed_mime_types=("image/jpeg",))

    def install(bucket: str) -> None:
        settings = make_settings(
            tmp_path,
            model_cache,
            receiver,
            callback_secret,
            supabase_url=real_storage.url,
            supabase_service_key=service_key,
            bucket=bucket,
        )
        install_settings(monkeypatch, settings)

    caplog.set_level(logging.DEBUG)
    install(real_bucket)
    completed = await generate_job(sdxl_job(num_images=1), return_state=True)
    install(jpeg_only)  # refuses the PNG originals: a run that fails in storage
    failed = await generate_job(sdxl_job(num_images=1), return_state=True)
    assert completed.is_completed() and failed.is_failed()
    secrets = {
        "service key": service_key,
        "callback secret": callback_secret,
        "jwt secret": real_storage.jwt_secret,
    }
    texts = {
        "completed run": await recorded_text(completed.state_details.flow_run_id),
        "failed run": await recorded_text(failed.state_details.flow_run_id),
        "results": repr(await completed.result()) + repr(failed.message),
        "python logs": "\n".join(r.getMessage() for r in caplog.records),
        "outbox and scratch": "\n".join(
            p.read_text(errors="replace")
            for p in tmp_path.rglob("*")
            if p.is_file() and p.suffix in {".json", ".txt", ".log"}
        ),
    }
    assert "Stored " in texts["completed run"]  # the scan sees real log content
    assert ".thumb.webp" in texts["completed run"]  # and the asset table artifact
    for where, text in texts.items():
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} leaked into {where}"
    # The callback does carry the gateway bearer and a signature, as the contract requires.
    accepted = [r for r in receiver.requests if r.answered == 200]
    assert accepted[0].headers["Authorization"] == f"Bearer {service_key}"
