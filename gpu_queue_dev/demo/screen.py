"""The demo's terminal output: narration with a pods table below it, redrawn in place on a
terminal and shown as plain snapshots elsewhere (a pipe, a CI log)."""

from __future__ import annotations

import os
import shutil
from typing import TextIO


class Screen:
    """Narration plus a pods table: redrawn in place on a terminal, appended snapshots elsewhere.

    Everything goes through one object on the event loop's thread, so the live redraw and the
    narration never interleave mid-line.
    """

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._table = ""
        self._drawn_lines = 0
        self._last_snapshot = ""

    def say(self, text: str = "") -> None:
        self._erase()
        self.stream.write(text + "\n")
        self._draw()

    def table(self, text: str) -> None:
        """Replace the table: redrawn now on a terminal; shown at the next ``snapshot`` otherwise."""
        self._table = text
        if self.live:
            self._erase()
            self._draw()

    def snapshot(self) -> None:
        """Where the story pauses: a plain copy of the table, unless nothing changed."""
        if self.live or not self._table or self._table == self._last_snapshot:
            return
        self._last_snapshot = self._table
        self.stream.write(self._table + "\n\n")
        self.stream.flush()

    def freeze(self) -> None:
        """Leave the last table on screen: from here on, text goes below it."""
        if self.live and self._drawn_lines:
            self._drawn_lines = 0
            self.stream.write("\n")
        self._table = ""
        self.stream.flush()

    def _erase(self) -> None:
        if self.live and self._drawn_lines:
            # Up to the first line of the table, then clear to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn_lines}A\r\x1b[J")
            self._drawn_lines = 0

    def _draw(self) -> None:
        if self.live and self._table:
            width = max(20, shutil.get_terminal_size((120, 24)).columns - 1)
            lines = [line[:width] for line in self._table.splitlines()]  # no wrapping: the count stays true
            self.stream.write("\n".join(lines) + "\n")
            self._drawn_lines = len(lines)
        self.stream.flush()


def is_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"
