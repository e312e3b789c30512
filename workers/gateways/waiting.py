"""Completion by callback, the transport's one way to answer, and what it needs:
``Done`` (the callback: called once with a result or the exception standing for it),
``settle`` (the one helper that completes a future from such an answer), ``result_of``
(the callback form as a coroutine), ``in_task`` (the rare path that must wait for
something first), and ``wait_in_line`` for a resource (a stream slot)."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

Done = Callable[[T | Exception], None]


def settle(future: asyncio.Future[T], answer: T | Exception) -> None:
    """Complete ``future`` with ``answer``, unless it is done already (cancelled)."""
    if future.done():
        return
    if isinstance(answer, Exception):
        future.set_exception(answer)
    else:
        future.set_result(answer)


async def result_of(start: Callable[[Done[T]], None]) -> T:
    """The answer ``start(done)`` hands to ``done``, awaited."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    start(functools.partial(settle, future))
    return await future


def in_task(work: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]],
            done: Done[Any], failure: Callable[[str], Exception], cancelled: str) -> None:
    """Run ``work`` in a task held in ``tasks`` (so that closing can cancel it). When it
    returns, it has handed ``done`` on; when it raises, ``done`` gets the exception, and
    ``failure(cancelled)`` when it was cancelled."""
    task = asyncio.ensure_future(work)
    tasks.add(task)
    task.add_done_callback(functools.partial(_task_done, tasks, done, failure, cancelled))


def _task_done(tasks: set[asyncio.Task[None]], done: Done[Any],
               failure: Callable[[str], Exception], cancelled: str,
               task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    if task.cancelled():
        done(failure(cancelled))
        return
    error = task.exception()
    if error is not None:
        done(error if isinstance(error, Exception) else failure(repr(error)))


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
