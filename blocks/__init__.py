"""Prefect blocks: connection facts and secrets, each with ``get_client()`` where it has one."""

from blocks.job_callback import JobCallbackEndpoint
from blocks.model_registry import ModelRegistry
from blocks.supabase_connection import SupabaseConnection

__all__ = ["JobCallbackEndpoint", "ModelRegistry", "SupabaseConnection"]
