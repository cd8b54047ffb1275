"""The settings a flow reads at its entry: the environment's, unless the process edge that
runs the flow in its own process (the ``genjobs`` command) handed it others.

A deployed flow run reads its environment; ``genjobs run`` builds its settings from its
options and enters :func:`using_settings` around the flow call, so no option travels through
``os.environ``. A flow's state hooks read the same. Nothing below the flows reads either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from genjobs.settings import Settings

_handed_in: ContextVar[Settings | None] = ContextVar("genjobs_entry_settings", default=None)


def entry_settings() -> Settings:
    """The settings handed in by the edge running this flow, else the environment's."""
    return _handed_in.get() or Settings()


@contextlib.contextmanager
def using_settings(settings: Settings) -> Iterator[Settings]:
    """Run the flows called inside (in this thread, and the tasks and threads it starts) with
    ``settings`` instead of the environment's."""
    token = _handed_in.set(settings)
    try:
        yield settings
    finally:
        _handed_in.reset(token)
