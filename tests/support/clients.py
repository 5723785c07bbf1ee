"""Blocking test clients (smtplib, raw sockets) run on threads of their own.

A gateway started in the test's event loop offloads work (scrypt checks, classification,
large renders) to the loop's default executor; clients on that same executor can fill
it and wait for replies the gateway cannot compute until a client finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_CLIENTS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="test-client")


async def on_client_thread(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``work`` on a client thread, never on the executor the gateway uses."""
    return await asyncio.get_running_loop().run_in_executor(_CLIENTS, lambda: work(*args, **kwargs))
