"""When a GPU worker may take its next job, and the renderer override knob."""

from __future__ import annotations

import time

import pytest

from devstack.timed_renderer import TimedRenderer
from genjobs.gpu_schedule import GpuSchedule
from genjobs.render.registry import load_renderer_class, renderer_for
from genjobs.settings import Settings


def test_an_idle_worker_takes_a_job_and_a_busy_one_waits_until_near_the_end() -> None:
    gpu = GpuSchedule()
    assert gpu.may_take_next(prefetch_seconds=2.0)
    gpu.claim("a")
    assert not gpu.may_take_next(2.0)  # taken, not yet on the GPU: being set up
    gpu.pipeline_started("a")
    assert not gpu.may_take_next(2.0)  # no step yet: the end cannot be estimated
    time.sleep(0.05)
    gpu.step(1, 1000)  # about 50 s to go
    assert not gpu.may_take_next(2.0)
    gpu.step(999, 1000)  # well under 2 s to go
    assert gpu.may_take_next(2.0)
    assert not gpu.may_take_next(0.0)  # prefetch off: only when idle
    gpu.claim("b")
    assert not gpu.may_take_next(2.0)  # never more than one waiting for the GPU
    gpu.release("a")
    assert not gpu.may_take_next(2.0)  # b is being set up
    gpu.release("b")
    gpu.release("b")  # idempotent
    assert gpu.may_take_next(2.0)


def test_a_job_that_never_reaches_the_gpu_frees_the_worker() -> None:
    gpu = GpuSchedule()
    gpu.claim("superseded")
    assert not gpu.may_take_next(2.0)
    gpu.release("superseded")  # the worker releases every run it took, however it ended
    assert gpu.may_take_next(2.0)
    assert gpu.remaining_seconds() is None


def test_the_renderer_class_setting_replaces_the_built_in_renderers() -> None:
    settings = Settings(renderer_class="devstack.timed_renderer:TimedRenderer")
    for family in ("sdxl", "wan"):
        renderer = renderer_for(family, settings)  # type: ignore[arg-type]
        assert isinstance(renderer, TimedRenderer)
        assert renderer.spec.family == family
    assert load_renderer_class("genjobs.gpu_schedule:GpuSchedule") is GpuSchedule
    with pytest.raises(ValueError, match="module:Class"):
        load_renderer_class("devstack.timed_renderer.TimedRenderer")
