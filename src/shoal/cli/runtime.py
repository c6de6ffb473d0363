"""Process plumbing shared by the long-running commands: event loop choice and signals."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from typing import Any


async def run_until_signalled() -> None:
    """Return on SIGINT or SIGTERM (Kubernetes stops pods with SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(coro: Coroutine[Any, Any, None], *, uvloop_ok: bool = True) -> None:
    """Run a coroutine on uvloop when it is installed and wanted, else on asyncio's loop.

    The agent passes ``uvloop_ok=False``: uvloop has no ``loop.sendfile``, so cache hits
    would be copied through Python; measured with ``python -m bench.agent``, asyncio's loop
    serves a cached 1 GiB blob 1.4x faster than uvloop does, and cold misses equally fast.
    ``SHOAL_EVENT_LOOP=uvloop|asyncio`` overrides the choice.
    """
    choice = os.environ.get("SHOAL_EVENT_LOOP", "")
    if choice == "asyncio" or (not uvloop_ok and choice != "uvloop"):
        asyncio.run(coro)
        return
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
