"""Prefect's standard block suite over the project's blocks, and secrets kept masked."""

from __future__ import annotations

import asyncio

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from blocks import JobCallbackEndpoint, ModelRegistry, SupabaseConnection
from blocks.connections import aapply_blocks, apply_blocks
from flows.generate import run_connections
from genjobs.settings import Settings


class _Suite(BlockStandardTestSuite):
    def test_has_a_valid_image(self, block: type[Block]) -> None:
        pytest.skip("The logo check downloads an image; this project uses Prefect's default.")


class TestSupabaseConnection(_Suite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return SupabaseConnection


class TestJobCallbackEndpoint(_Suite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return JobCallbackEndpoint


class TestModelRegistry(_Suite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return ModelRegistry


@pytest.mark.usefixtures("prefect_api")
def test_saved_blocks_configure_the_runtime_without_exposing_secrets() -> None:
    SupabaseConnection(
        url="http://127.0.0.1:1", service_key=SecretStr("svc-key-123"), bucket="workspace-temp"
    ).save("test-supabase", overwrite=True)
    JobCallbackEndpoint(url="http://127.0.0.1:2/cb", secret=SecretStr("hmac-456")).save(
        "test-callback", overwrite=True
    )
    ModelRegistry(sdxl_scheduler="DPMSolverMultistepScheduler").save("test-models", overwrite=True)
    named = Settings(
        supabase_block="test-supabase", callback_block="test-callback", models_block="test-models"
    )
    settings = apply_blocks(named)
    # The flows' loader (all blocks at once, on the caller's client) lays over the same values.
    assert asyncio.run(aapply_blocks(named)) == settings
    assert settings.supabase_url == "http://127.0.0.1:1"
    assert settings.supabase_service_key is not None
    assert settings.supabase_service_key.get_secret_value() == "svc-key-123"
    assert settings.job_callback_secret is not None
    assert settings.job_callback_secret.get_secret_value() == "hmac-456"
    assert settings.resolved_callback_url == "http://127.0.0.1:2/cb"
    assert settings.sdxl_scheduler == "DPMSolverMultistepScheduler"
    shown = repr(settings) + str(SupabaseConnection.load("test-supabase"))
    assert "svc-key-123" not in shown and "hmac-456" not in shown
    # A flow process whose renders run on the GPU workers leaves the model registry alone.
    connections_only = asyncio.run(aapply_blocks(named, renders=False))
    assert connections_only.sdxl_scheduler == Settings().sdxl_scheduler != settings.sdxl_scheduler
    assert connections_only.job_callback_secret == settings.job_callback_secret


@pytest.mark.usefixtures("prefect_api")
def test_a_flow_process_that_dispatches_renders_loads_no_model_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    JobCallbackEndpoint(url="http://127.0.0.1:2/cb", secret=SecretStr("hmac-456")).save(
        "test-callback", overwrite=True
    )
    monkeypatch.setenv("GENJOBS_CALLBACK_BLOCK", "test-callback")
    monkeypatch.setenv("GENJOBS_MODELS_BLOCK", "no-such-registry")  # loading it would raise
    monkeypatch.setenv("GENJOBS_RENDER_DISPATCH", "gpu_workers")
    built = asyncio.run(run_connections(Settings()))
    assert built.callback.url == "http://127.0.0.1:2/cb"
    monkeypatch.setenv("GENJOBS_RENDER_DISPATCH", "in_process")
    with pytest.raises(ValueError, match="no-such-registry"):
        asyncio.run(run_connections(Settings()))
