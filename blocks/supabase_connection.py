"""The Supabase project the flows store assets in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

if TYPE_CHECKING:
    from genjobs.storage.supabase import SupabaseStorage


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

    def get_client(self) -> Any:
        """The official ``supabase`` client for this project."""
        from supabase import create_client

        return create_client(self.url, self.service_key.get_secret_value())

    def get_storage(self) -> SupabaseStorage:
        """The project's storage backend (errors translated into StorageError)."""
        from genjobs.storage.supabase import SupabaseStorage

        return SupabaseStorage.from_supabase(
            self.url, self.service_key, timeout=self.timeout_seconds
        )
