"""The app on a real port, in a thread with its own event loop, for synchronous tests
(hypothesis drives it with plain HTTP requests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from aiohttp import web

from server.dev.devenv import free_port
from server.settings import Settings
from server.web.app import create_app

T = TypeVar("T")


class LiveApp:
    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self._loop = loop

    def run(self, coro: Awaitable[T]) -> T:
        """Run a coroutine on the app's loop and wait for it."""
        async def wrapper() -> T:
            return await coro
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(30)


@contextmanager
def live_app(settings: Settings) -> Iterator[LiveApp]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(create_app(settings), access_log=None)
    port = free_port()
    app = LiveApp(f"http://127.0.0.1:{port}", loop)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    app.run(start())
    try:
        yield app
    finally:
        app.run(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
