"""A one-line progress bar on stderr, redrawn with `\\r`: for sending many messages."""

from __future__ import annotations

import time
from typing import TextIO

AUTO_THRESHOLD = 50  # more items than this show a bar on a terminal without --progress
BAR_WIDTH = 30
REDRAW_SECONDS = 0.1


class Progress:
    """`advance()` per item; `finish()` ends the line. Draws nothing when not enabled."""

    def __init__(self, total: int, *, label: str, stream: TextIO, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self._label = label
        self._stream = stream
        self._enabled = enabled
        self._drawn_at = 0.0
        self._drawn_done = -1

    @classmethod
    def for_stream(cls, total: int, *, label: str, stream: TextIO, forced: bool | None) -> Progress:
        """On with `--progress`, off with `--no-progress`, else on a terminal for more than AUTO_THRESHOLD items."""
        enabled = forced if forced is not None else (total > AUTO_THRESHOLD and stream.isatty())
        return cls(total, label=label, stream=stream, enabled=enabled)

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self._drawn_at >= REDRAW_SECONDS:
            self._draw()
            self._drawn_at = now

    def finish(self) -> None:
        """End the bar's line, where it stands (also after a failure part-way)."""
        if self._enabled:
            if self._drawn_done != self.done:
                self._draw()
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self) -> None:
        if not self._enabled:
            return
        filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
        percent = 100 * self.done // self.total if self.total else 100
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self._stream.write(f"\r{self._label} [{bar}] {self.done}/{self.total} ({percent}%)")
        self._stream.flush()
        self._drawn_done = self.done
