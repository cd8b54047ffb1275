"""Which weights each model family loads, and how."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from genjobs.settings import Settings


class ModelRegistry(Block):
    """Per family: a folder, a single-file checkpoint or a hub id; none means the embedded model."""

    _block_type_name = "Generation Model Registry"
    _documentation_url = "https://github.com/genjobs/genjobs/blob/main/docs/runbook.md"  # type: ignore[assignment]
    _code_example = """
    ```python
    from blocks.model_registry import ModelRegistry

    block = ModelRegistry.load("BLOCK_NAME")
    ```
    """
    _description = "Model sources, dtype, scheduler and device for the SDXL and WAN renderers."

    sdxl_source: str | None = Field(
        default=None, description="Folder, .safetensors checkpoint or hub id for SDXL."
    )
    sdxl_scheduler: str = Field(
        default="EulerDiscreteScheduler", description="diffusers scheduler class for SDXL."
    )
    wan_source: str | None = Field(default=None, description="Folder or hub id for WAN 2.1 T2V.")
    wan_vace_source: str | None = Field(
        default=None, description="Folder or hub id of the WAN VACE transformer (references)."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="Weights dtype; auto is float16 on CUDA, float32 on CPU."
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    torch_compile: bool = Field(default=False, description="Compile the denoiser on CUDA.")

    def apply_to(self, settings: Settings) -> Settings:
        """``settings`` with this registry's sources, scheduler, dtype, device and compile flag."""
        return settings.model_copy(update=self.model_dump(include=MODEL_FIELDS))


MODEL_FIELDS = {
    "sdxl_source",
    "sdxl_scheduler",
    "wan_source",
    "wan_vace_source",
    "dtype",
    "device",
    "torch_compile",
}
"""What a ModelRegistry block sets."""
