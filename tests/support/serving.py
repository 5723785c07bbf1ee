"""`optgate serve` as a real process tree: its JSON log lines, its ports, its workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTGATE = Path(sys.prefix) / "bin" / "optgate"
WAIT = 30.0  # seconds a test waits for a log line or an exit


@dataclass
class Served:
    """A running `optgate serve`: the supervisor process and what it logged so far."""

    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    stderr: bytearray = field(default_factory=bytearray)
    logged: asyncio.Condition = field(default_factory=asyncio.Condition)

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Log lines of one event whose fields match."""
        return [
            line
            for line in self.lines
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items())
        ]

    async def wait_for(self, event: str, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        """Wait (bounded) until `count` such lines were logged; return them."""
        async with asyncio.timeout(WAIT), self.logged:
            await self.logged.wait_for(lambda: len(self.events(event, **match)) >= count)
        return self.events(event, **match)

    def address(self, part: str) -> tuple[str, int]:
        """Where a part listens, from the supervisor's first line."""
        host, _, port = self.events("workers_starting")[0][part].rpartition(":")
        return host, int(port)

    def worker_pids(self) -> set[int]:
        """Workers that reported ready and were not seen to exit."""
        gone = {line["pid"] for line in self.events("worker_died")}
        return {line["pid"] for line in self.events("worker_ready")} - gone

    def children(self) -> set[int]:
        """The supervisor's child processes right now."""
        pid = self.process.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except FileNotFoundError:
            return set()
        return {int(child) for child in text.split()}

    async def exit_code(self) -> int:
        """Wait (bounded) for the supervisor, and every worker, to exit."""
        async with asyncio.timeout(WAIT):
            return await self.process.wait()

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))
            async with self.logged:
                self.logged.notify_all()

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.stderr.extend(raw)


def alive(pid: int) -> bool:
    """Whether a process exists (a reaped one does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.asynccontextmanager
async def optgate_serve(
    env: Mapping[str, str],
    *args: str,
    ready: int | None = None,
    prefix: Sequence[str] = (),
    cwd: Path | None = None,
) -> AsyncIterator[Served]:
    """Start `optgate serve ARGS` with these OPTGATE_* variables; wait for `ready` workers.

    ``prefix`` runs it through another command that execs it (the pid stays the
    supervisor's); ``cwd`` is its working directory. On exit a supervisor still
    running gets SIGKILL, as do its workers.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    process = await asyncio.create_subprocess_exec(
        *prefix,
        OPTGATE,
        "serve",
        *args,
        cwd=cwd,
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    served = Served(process)
    readers = [asyncio.create_task(served._read()), asyncio.create_task(served._read_errors())]
    try:
        if ready:
            await served.wait_for("worker_ready", ready)
        yield served
    finally:
        if process.returncode is None:
            pids: Sequence[int] = sorted(served.children())
            process.kill()  # first: it would replace the workers
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await process.wait()  # (once the workers closed their ends of its pipes too)
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*readers)
