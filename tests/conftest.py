"""Shared fixtures: one Prefect test API per session; per test, settings on a temp folder
installed in the environment and the connections built from them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from genjobs.connections import Connections, connections_from_settings
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.settings import Settings
from tests.settings_env import install_settings

# The real Supabase Storage server's fixtures (real_storage, real_bucket, fault_proxy, ...).
pytest_plugins = ["tests.real_storage"]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect API (the test harness), entered once per session (about 7 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the embedded tiny models, built once per session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def callback_secret() -> str:
    return "test-callback-secret-" + secrets.token_hex(8)


@pytest.fixture
def receiver(callback_secret: str) -> Iterator[CallbackReceiver]:
    with CallbackReceiver(callback_secret) as running:
        yield running


def make_settings(
    home: Path, model_cache: Path, receiver: CallbackReceiver, secret: str, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "model_cache": model_cache,
        "callback_url": receiver.url,
        "job_callback_secret": SecretStr(secret),
        "callback_retry_window_seconds": 2.0,
        "callback_retry_base_seconds": 0.05,
        "storage_retry_base_seconds": 0.05,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def connections(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Connections:
    """The embedded default on a temp folder, reporting to the local receiver: installed in the
    environment (what a flow reads at its entry), and the connections built from it."""
    settings = make_settings(tmp_path, model_cache, receiver, callback_secret)
    return connections_from_settings(install_settings(monkeypatch, settings))
