"""The CLI reads its settings from the environment: an embedded default on a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

BACKEND_VARIABLES = (
    "SUPABASE_URL",
    "SUPABASE_SERVICE_KEY",
    "JOB_CALLBACK_SECRET",
    "GENJOBS_SUPABASE_URL",
    "GENJOBS_SUPABASE_SERVICE_KEY",
    "GENJOBS_SUPABASE_BLOCK",
    "GENJOBS_CALLBACK_BLOCK",
    "GENJOBS_MODELS_BLOCK",
    "GENJOBS_DATABASE_DSN",
    "GENJOBS_REFERENCE_ALLOW_HOSTS",
)


@pytest.fixture
def cli_home(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GENJOBS_HOME for one CLI call, no backend configured."""
    for name in BACKEND_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GENJOBS_HOME", str(tmp_path))
    monkeypatch.setenv("GENJOBS_MODEL_CACHE", str(model_cache))
    monkeypatch.setenv("GENJOBS_CALLBACK_URL", "")  # the CLI hands its receiver to the run alone
    monkeypatch.setenv("GENJOBS_JOB_CALLBACK_SECRET", "")
    return tmp_path
