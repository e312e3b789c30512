"""Waiting in line for a resource (a stream slot, a pooled connection), and waiting
in a task for an answer that a callback should get."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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


def finish_in_task(work: Coroutine[Any, Any, T], tasks: set[asyncio.Task[T]],
                   finish: Callable[[T | Exception], None],
                   failure: Callable[[str], Exception], cancelled: str) -> None:
    """Run ``work`` in a task held in ``tasks`` (so that closing can cancel it);
    ``finish`` is called once with its result or the exception it raised, or, if it
    was cancelled, with ``failure(cancelled)``."""
    task = asyncio.ensure_future(work)
    tasks.add(task)
    task.add_done_callback(functools.partial(_task_done, tasks, finish, failure, cancelled))


def _task_done(tasks: set[asyncio.Task[T]], finish: Callable[[T | Exception], None],
               failure: Callable[[str], Exception], cancelled: str,
               task: asyncio.Task[T]) -> None:
    tasks.discard(task)
    if task.cancelled():
        finish(failure(cancelled))
        return
    error = task.exception()
    if error is None:
        finish(task.result())
    else:
        finish(error if isinstance(error, Exception) else failure(repr(error)))
