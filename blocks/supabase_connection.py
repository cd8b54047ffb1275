"""The Supabase project the flows store assets in."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from genjobs.settings import Settings


class SupabaseConnection(Block):
    """URL and service-role key of a Supabase project, and the bucket assets go to."""

    _block_type_name = "Supabase Connection"
    _documentation_url = "https://github.com/genjobs/genjobs/blob/main/docs/runbook.md"  # type: ignore[assignment]
    _code_example = """
    ```python
    from blocks.supabase_connection import SupabaseConnection

    block = SupabaseConnection.load("BLOCK_NAME")
    ```
    """
    _description = "A Supabase project URL and service-role key for Storage uploads."

    url: str = Field(description="Project URL, e.g. https://abcd.supabase.co.")
    service_key: SecretStr = Field(description="The service-role key (a JWT); bypasses RLS.")
    bucket: str = Field(default="workspace-temp", description="Bucket for generated assets.")
    timeout_seconds: float = Field(default=60.0, description="Timeout of one storage request.")

    def apply_to(self, settings: Settings) -> Settings:
        """``settings`` with this project's URL, key, bucket and request timeout in force."""
        return settings.model_copy(
            update={
                "supabase_url": self.url,
                "supabase_service_key": self.service_key,
                "bucket": self.bucket,
                "storage_timeout_seconds": self.timeout_seconds,
            }
        )
