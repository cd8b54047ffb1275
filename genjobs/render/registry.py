"""Which renderer serves a model family, with model specs taken from settings."""

from __future__ import annotations

import importlib
from typing import Any

from genjobs.jobs.types import Family
from genjobs.render.base import ModelSpec, Renderer
from genjobs.settings import Settings


def sdxl_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(
        family="sdxl",
        source=settings.sdxl_source,
        dtype=settings.dtype,
        scheduler=settings.sdxl_scheduler,
        device=settings.device,
        compile=settings.torch_compile,
    )


def wan_specs(settings: Settings) -> tuple[ModelSpec, ModelSpec]:
    t2v = ModelSpec(
        family="wan",
        source=settings.wan_source,
        dtype=settings.dtype,
        device=settings.device,
        compile=settings.torch_compile,
    )
    vace = ModelSpec(
        family="wan_vace",
        source=settings.wan_vace_source,
        dtype=settings.dtype,
        device=settings.device,
    )
    return t2v, vace


def load_renderer_class(reference: str) -> Any:
    """Import ``module:Class`` (the ``renderer_class`` setting)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"A renderer class is named as 'module:Class', got {reference!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def renderer_for(family: Family, settings: Settings) -> Renderer:
    """A renderer for the family. Cheap: pipelines live in the process-wide cache.

    ``settings.renderer_class`` (``module:Class``) replaces the built-in renderers for every
    family; the class is called as ``Class(family, settings)``.
    """
    if settings.renderer_class:
        renderer: Renderer = load_renderer_class(settings.renderer_class)(family, settings)
        return renderer
    if family == "sdxl":
        from genjobs.render.sdxl import SdxlRenderer

        return SdxlRenderer(sdxl_spec(settings), settings.model_dir)
    from genjobs.render.wan import WanRenderer

    t2v, vace = wan_specs(settings)
    return WanRenderer(t2v, vace, settings.model_dir)
