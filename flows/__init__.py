"""Prefect flows: generation, outbox re-delivery, backfill and cleanup."""
