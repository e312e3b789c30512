"""Live review-queue changes for the console's event streams.

One dedicated PostgreSQL connection per web process LISTENs on the channel the
``review_items`` trigger notifies (sql/0006), so an item stored by any web process, a
decision taken anywhere and the expiry sweep all reach every open console. Each
subscriber gets only its own agency's changes (the operator's: all of them). When the
connection is lost and comes back, subscribers are told to resync, since notifications
sent in between are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg

from server.keys import REVIEW_CHANNEL

log = logging.getLogger(__name__)

RESYNC = "*"   # an incident id no item has: "re-read the whole queue"


@dataclass(eq=False)
class Subscription:
    agency_id: str | None                # None: every agency (the operator)
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(1000))

    def offer(self, incident_id: str | None) -> None:
        if self.queue.full():
            # A reader this far behind re-reads the whole queue instead.
            while not self.queue.empty():
                self.queue.get_nowait()
            if incident_id is not None:
                incident_id = RESYNC
        self.queue.put_nowait(incident_id)


class ReviewFeed:
    def __init__(self, dsn: str, *, retry_s: float = 2.0) -> None:
        self._dsn = dsn
        self._retry_s = retry_s
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def subscribe(self, agency_id: str | None) -> Subscription:
        sub = Subscription(agency_id)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        agency_id, _, incident_id = str(payload).partition(" ")
        for sub in self._subscribers:
            if sub.agency_id is None or sub.agency_id == agency_id:
                sub.offer(incident_id)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.add_listener(REVIEW_CHANNEL, self._notified)
            self.listening.set()
            for sub in self._subscribers:
                sub.offer(RESYNC)
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            await lost.wait()
        finally:
            self.listening.clear()
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_once()
                log.warning("review feed: connection lost, reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    TimeoutError) as exc:
                log.warning("review feed: cannot listen (%s); retrying", exc)
            await asyncio.sleep(self._retry_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def close_streams(self) -> None:
        """End every event stream (at shutdown, before the server waits for handlers)."""
        for sub in self._subscribers:
            sub.offer(None)

    async def stop(self) -> None:
        self.close_streams()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
