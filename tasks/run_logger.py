"""The run logger, with a fallback for code that also runs in state hooks."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger(fallback: str) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The current run's logger; the ``fallback`` module logger where a worker runs a hook
    outside any run context."""
    try:
        return get_run_logger()  # type: ignore[return-value]
    except MissingContextError:
        return logging.getLogger(fallback)
