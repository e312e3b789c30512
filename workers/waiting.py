"""Waiting in line for a resource (a stream slot, a pooled connection)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable


async def wait_in_line(waiters: collections.deque[asyncio.Future[None]],
                       wake_next: Callable[[], None]) -> None:
    """Join ``waiters`` and wait to be woken (a result set on our future). A waiter
    cancelled after it was woken passes the wake-up on, so none is lost."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled():
            wake_next()
        raise
    finally:
        if waiter in waiters:
            waiters.remove(waiter)
