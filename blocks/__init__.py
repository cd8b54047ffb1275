"""Prefect blocks: connection facts, secrets and model sources, each laid over the settings
with ``apply_to`` (blocks/connections.py builds the connections from the result)."""

from blocks.job_callback import JobCallbackEndpoint
from blocks.model_registry import ModelRegistry
from blocks.supabase_connection import SupabaseConnection

__all__ = ["JobCallbackEndpoint", "ModelRegistry", "SupabaseConnection"]
