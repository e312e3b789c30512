"""Reads that may go to a streaming replica (GEOPUSH_DATABASE_REPLICA_URL): the
matcher's.

A replica lags its primary, so "read from the replica" alone could miss an incident
accepted a moment ago, or a device registered a second before it, or the delivery
records an update is sent by. The rule here: a batch of work read from a stream at
time T reads from the replica only once the replica has replayed everything the
primary had written at T; else from the primary. Every incident on the stream was
committed before it was XADDed (the web process and the relay publish after the
commit), so the replica then has every incident of the batch, every device and zone
committed before it, and every delivery recorded before it: matching on the replica
reaches exactly whom matching on the primary would have at T.

How far the primary had got is ``pg_current_wal_lsn()`` (its WAL write position: with
``synchronous_commit`` on, the default, past every acknowledged commit); how far the
replica has replayed is ``pg_last_wal_replay_lsn()``. One query on each per batch; a
healthy replica catches up within milliseconds, so a batch waits up to ``wait`` for it
(GEOPUSH_DATABASE_REPLICA_WAIT_MS) before reading from the primary instead. A replica
that can't be reached is left alone for ``retry_after`` seconds, so a dead replica costs
one timeout, not one per batch. Writes never go to the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from server import metrics
from server.store.db import STORE_UNAVAILABLE

log = logging.getLogger(__name__)

# A replica's reads may fail where the primary's would not: besides being unreachable,
# a hot standby cancels a query whose snapshot conflicts with what it is replaying
# ("canceling statement due to conflict with recovery", SQLSTATE 40001; rarer with
# hot_standby_feedback on). Either way the work is redone on the primary.
REPLICA_FAILURES: tuple[type[BaseException], ...] = (
    *STORE_UNAVAILABLE, asyncpg.exceptions.SerializationError)

# How far the replica still has to replay to reach the primary's position ($1); 0 for a
# server that is not (or no longer) a standby: a promoted replica is a primary.
_BEHIND = """
SELECT CASE WHEN pg_is_in_recovery()
            THEN pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn())
            ELSE 0 END
"""


class ReplicaReads:
    """Picks, for each batch, the pool its reads go to: ``replica`` once it has caught
    up with ``primary`` as of the call, else ``primary``."""

    def __init__(self, primary: asyncpg.Pool, replica: asyncpg.Pool, *, wait_s: float,
                 poll_s: float = 0.005, retry_after_s: float = 5.0) -> None:
        self.primary = primary
        self.replica = replica
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.retry_after_s = retry_after_s
        self._down_until = 0.0

    async def pool(self) -> asyncpg.Pool:
        """The pool whose reads see everything committed on the primary before this
        call: the replica once it replayed that far (waiting up to ``wait_s``), else
        the primary."""
        if time.monotonic() < self._down_until:
            metrics.REPLICA_READS.labels("unavailable").inc()
            return self.primary
        position = await self.primary.fetchval("SELECT pg_current_wal_lsn()")
        try:
            # The replica's answers are bounded too: a replica that stopped answering
            # must not hold matching up longer than a lagging one would.
            caught_up = await asyncio.wait_for(self._caught_up(position),
                                               timeout=self.wait_s + 1.0)
        except STORE_UNAVAILABLE as exc:
            self.unavailable(exc)
            metrics.REPLICA_READS.labels("unavailable").inc()
            return self.primary
        metrics.REPLICA_READS.labels("replica" if caught_up else "lagging").inc()
        return self.replica if caught_up else self.primary

    async def _caught_up(self, position: int) -> bool:
        deadline = time.monotonic() + self.wait_s
        while True:
            behind = await self.replica.fetchval(_BEHIND, position)
            # NULL: a standby that has replayed nothing yet.
            lag = float(behind) if behind is not None else None
            metrics.REPLICA_LAG_BYTES.set(max(lag, 0.0) if lag is not None else 0.0)
            if lag is not None and lag <= 0:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_s)

    def unavailable(self, exc: BaseException) -> None:
        """The replica failed a read: the primary serves for ``retry_after_s``."""
        if time.monotonic() >= self._down_until:
            log.warning("replica unavailable (%s): reading from the primary for %.0fs",
                        exc or type(exc).__name__, self.retry_after_s)
        self._down_until = time.monotonic() + self.retry_after_s
