"""Fixtures of the deployed-path tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from genjobs import progress
from genjobs.connections import Connections
from genjobs.devserver.receiver import CallbackReceiver


@pytest.fixture
def steps() -> Iterator[list[tuple[int, int]]]:
    """Every render step reported in this process, as (done, total)."""
    seen: list[tuple[int, int]] = []
    unsubscribe = progress.subscribe(
        lambda stage, done, total: seen.append((done, total)) if stage == "render" else None
    )
    yield seen
    unsubscribe()


@pytest.fixture
def timed(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Connections]:
    """``timed(step_seconds, **settings)``: connections of the timed renderer, installed in the
    environment (tests/deploy/test_render_dispatch.py: ``timed_connections``)."""
    from tests.deploy.test_render_dispatch import timed_connections

    def make(step_seconds: float, **overrides: Any) -> Connections:
        return timed_connections(
            tmp_path, model_cache, receiver, callback_secret, monkeypatch, step_seconds,
            **overrides,
        )  # fmt: skip

    return make
