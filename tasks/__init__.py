"""Prefect tasks: one step or one side effect each."""
