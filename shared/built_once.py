"""A value built once per process from the object it depends on: the double-checked lock, written once.

The settings (built from `os.environ`), the cancel service (from the settings), the results queue (from
its settings) and its storage client are each built by the first caller while concurrent callers wait, then kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BuiltOnce(Generic[K, V]):
    """`build(source)`, kept until it is asked for with another source object (by identity) or `reset()`."""

    def __init__(self, build: Callable[[K], V]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._kept: tuple[K, V] | None = None  # (source, value), swapped in one assignment

    def get(self, source: K) -> V:
        kept = self._kept
        if kept is None or kept[0] is not source:
            with self._lock:
                kept = self._kept
                if kept is None or kept[0] is not source:
                    kept = self._kept = (source, self._build(source))
        return kept[1]

    def reset(self) -> None:
        """Forget the value: the next `get` builds it again."""
        with self._lock:
            self._kept = None
