"""Image and video generation jobs for a Supabase-backed app, run as Prefect flows."""

__version__ = "0.1.0"
