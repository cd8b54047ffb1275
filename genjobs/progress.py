"""Process-local progress listeners (the CLI's progress bar subscribes here).

Steps report ``(stage, done, total)``; listeners must be cheap and must not raise.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressListener = Callable[[str, int, int], None]
_listeners: list[ProgressListener] = []


def subscribe(listener: ProgressListener) -> Callable[[], None]:
    """Add a listener; returns a function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(stage: str, done: int, total: int) -> None:
    for listener in list(_listeners):
        listener(stage, done, total)
