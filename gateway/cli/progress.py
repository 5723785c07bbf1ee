"""An import's progress on a terminal: rows read, rows a second, time left to read;
then the write.

One line on stderr, redrawn twice a second by a task that runs whenever the
import awaits the store (every batch, and all through the final write, which
runs on the store's thread or server); the time left to read comes from the
bytes read out of the file's size (a pipe has none: rows and rate only). The
write that follows (the sorted merge: on 1,000,000 rows as long as the reading)
has no estimate: its line says how long it has run. Nothing is drawn when
stderr is not a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO, TextIO

from suppression.importing import Summary

INTERVAL = 0.5  # seconds between redraws


def _where(handle: BinaryIO) -> tuple[Callable[[], int] | None, int | None]:
    """How far into the file the reader is, and the file's size, when it is a file."""
    try:
        size = os.fstat(handle.fileno()).st_size
        handle.tell()
    except (OSError, ValueError):
        return None, None
    return (handle.tell, size) if size else (None, None)


class Progress:
    """The line for one import."""

    def __init__(self, out: TextIO, summary: Summary, handle: BinaryIO) -> None:
        self._out, self._summary = out, summary
        self._position, self._size = _where(handle)
        self._start = time.monotonic()
        self._writing: float | None = None  # when the write began

    def line(self) -> str:
        """What the line says now."""
        at = time.monotonic()
        elapsed = max(at - self._start, 1e-6)
        read = self._summary.read
        if self._summary.writing:
            self._writing = self._writing or at
            return (
                f"{read:,} rows read; writing to the store: {at - self._writing:.0f} s "
                f"so far ({elapsed:.0f} s in all)"
            )
        text = f"{read:,} rows, {read / elapsed:,.0f} rows/s"
        if self._position and self._size:
            done = min(self._position() / self._size, 1.0)
            if done > 0:
                left = elapsed * (1 - done) / done
                text += f", {done:.0%} read, about {left:.0f} s left to read, then the write"
        return text

    def draw(self) -> None:
        """Redraw the line."""
        self._out.write("\r\x1b[K" + self.line())
        self._out.flush()


@contextlib.asynccontextmanager
async def shown(out: TextIO, summary: Summary, handle: BinaryIO) -> AsyncIterator[None]:
    """Draw the progress line while the block runs, if ``out`` is a terminal."""
    if not out.isatty():
        yield
        return
    progress = Progress(out, summary, handle)

    async def redraw() -> None:
        while True:
            progress.draw()
            await asyncio.sleep(INTERVAL)

    task = asyncio.create_task(redraw())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        progress.draw()
        out.write("\n")
