"""The workers' composition root: ``run_worker(settings, kind)``.

One process runs one kind of worker (matcher, apns, fcm, relay); run more processes
to scale. SIGTERM/SIGINT stop reading new work; what is in flight finishes (bounded by
``SHUTDOWN_GRACE_S``) and is acknowledged before the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg

from server import keys
from server.metrics import bound_port, serve_metrics
from server.settings import FCM_STREAMS, ConfigError, Settings
from server.store.db import create_pool
from server.store.redisclient import RedisClient, connect, replica_wait
from server.store.replica import ReplicaReads
from workers import backlog
from workers.apns import ApnsGateway
from workers.apns_token import SharedProviderToken
from workers.fanout import FanoutLimits
from workers.fcm import FcmGateway
from workers.gateways.apns_client import ApnsClient
from workers.gateways.fcm_client import FcmClient
from workers.maintenance import Retention, run_maintenance
from workers.matcher import Matcher
from workers.outbox_relay import run_relay
from workers.sender import Gateway, Sender
from workers.streams import Consumer, ShardedConsumer, StreamConsumer

log = logging.getLogger(__name__)

KINDS = ("matcher", "apns", "fcm", "relay")
# How long an idle matcher waits for an incident before it looks at the work stream
# and the push streams' backlog again.
MATCHER_IDLE_MS = 100


def fanout_limits(settings: Settings) -> FanoutLimits:
    page = settings.fanout_item_devices
    return FanoutLimits(first_page=min(500, page), page=page, split_after=2 * page,
                        backlog=settings.push_backlog_limit)
SHUTDOWN_GRACE_S = 20.0


def build_gateway(settings: Settings, platform: str, redis: RedisClient) -> Gateway:
    if platform == "apns":
        apns = settings.apns
        if apns is None:
            raise ConfigError("the apns sender needs GEOPUSH_APNS_KEY_FILE and friends")
        context = ssl.create_default_context()
        if apns.ca_file:
            context.load_verify_locations(cafile=str(apns.ca_file))
        key_pem = apns.key_file.read_text()
        return ApnsGateway(ApnsClient(
            key_pem=key_pem, key_id=apns.key_id, team_id=apns.team_id,
            topic=apns.topic, host=apns.host, port=apns.port, ssl_context=context,
            max_connections=apns.max_connections, request_timeout=apns.request_timeout,
            token_source=SharedProviderToken(redis, key_pem=key_pem, key_id=apns.key_id,
                                             team_id=apns.team_id),
        ), critical_alerts=apns.critical_alerts)
    fcm = settings.fcm
    if fcm is None:
        raise ConfigError("the fcm sender needs GEOPUSH_FCM_SERVICE_ACCOUNT_FILE")
    return FcmGateway(FcmClient(
        service_account_file=str(fcm.service_account_file), project_id=fcm.project_id,
        endpoint=fcm.endpoint, timeout=fcm.request_timeout, max_connections=fcm.max_connections,
        initial_stream_limit=FCM_STREAMS,
        ca_file=None if fcm.ca_file is None else str(fcm.ca_file),
    ))


@contextlib.asynccontextmanager
async def resources(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, RedisClient]]:
    pool = await create_pool(settings.database_url, min_size=1, max_size=10)
    # Strings decoded by hiredis, in C. A single node or a Redis Cluster (redisclient).
    redis = await connect(settings.redis_url, settings.redis_mode, socket_connect_timeout=5,
                          health_check_interval=30, decode_responses=True)
    try:
        yield pool, redis
    finally:
        await redis.aclose()
        await pool.close()


@contextlib.asynccontextmanager
async def replica_reads(settings: Settings, primary: asyncpg.Pool
                        ) -> AsyncIterator[ReplicaReads | None]:
    """The matcher's reads from GEOPUSH_DATABASE_REPLICA_URL (None when unset). Lazy
    (no connection at start) and quick to give up connecting: a replica that is down
    sends reads to the primary, it never stops matching."""
    if not settings.database_replica_url:
        yield None
        return
    replica = await create_pool(settings.database_replica_url, min_size=0, max_size=10,
                                connect_timeout=2)
    try:
        yield ReplicaReads(primary, replica, wait_s=settings.replica_wait_ms / 1000)
    finally:
        await replica.close()


def claim_every_s(settings: Settings) -> float:
    """How often a worker looks for entries a dead one left: often enough that they
    wait little more than GEOPUSH_CLAIM_IDLE_MS, at most every 15 s."""
    return min(15.0, settings.claim_idle_ms / 2000)


@contextlib.asynccontextmanager
async def exported_metrics(settings: Settings, kind: str, pool: asyncpg.Pool,
                           redis: RedisClient) -> AsyncIterator[None]:
    """``/metrics`` on GEOPUSH_METRICS_PORT while the worker runs (nothing when unset)."""
    if settings.metrics_port is None:
        yield
        return
    runner = await serve_metrics(settings.metrics_host, settings.metrics_port,
                                 backlog.for_kind(kind, pool, redis,
                                                      settings.push_stream_shards))
    log.info("%s metrics on http://%s:%d/metrics", kind, settings.metrics_host,
             bound_port(runner))
    try:
        yield
    finally:
        await runner.cleanup()


async def run_sender_loop(sender: Sender, consumer: Consumer, stop: asyncio.Event
                          ) -> None:
    async def promote() -> None:
        while not stop.is_set():
            try:
                await sender.promote_due_retries()
            except Exception as exc:  # keep promoting; the next pass will catch up
                log.warning("promoting retries failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)

    promoter = asyncio.create_task(promote())
    try:
        await sender.run(consumer, stop)
    finally:
        promoter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await promoter


async def worker_main(
    settings: Settings, kind: str, stop: asyncio.Event,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run one worker until ``stop`` is set. Used by the CLI and, in-process, by tests."""
    if kind not in KINDS:
        raise ConfigError(f"unknown worker kind {kind!r}; one of {', '.join(KINDS)}")
    async with resources(settings) as (pool, redis), \
            exported_metrics(settings, kind, pool, redis):
        if kind == "relay":
            if ready:
                await ready()
            await asyncio.gather(
                run_relay(pool, redis, stop, wait=replica_wait(settings)),
                run_maintenance(pool, Retention(settings.exact_location_retention,
                                                settings.delivery_retention,
                                                settings.incident_retention), stop,
                                redis=redis,
                                push_stream_shards=settings.push_stream_shards),
            )
            return
        if kind == "matcher":
            async with replica_reads(settings, pool) as reads:
                matcher = Matcher(pool, redis,
                                  device_pushes_per_hour=settings.device_pushes_per_hour,
                                  location_ttl=settings.location_ttl,
                                  shards=settings.push_stream_shards,
                                  limits=fanout_limits(settings),
                                  replica_wait=replica_wait(settings), reads=reads)
                # Incidents a few at a time, waiting briefly when there are none (a work
                # item another matcher posted, or room on the push streams, may come
                # meanwhile); work items one at a time.
                incidents = StreamConsumer(redis, keys.INCIDENTS_STREAM, keys.MATCHER_GROUP,
                                           settings.consumer_name, batch=settings.stream_batch,
                                           block_ms=MATCHER_IDLE_MS,
                                           claim_idle_ms=settings.claim_idle_ms,
                                           claim_every_s=claim_every_s(settings))
                work = StreamConsumer(redis, keys.FANOUT_WORK_STREAM, keys.MATCHER_GROUP,
                                      settings.consumer_name, batch=1,
                                      claim_idle_ms=settings.claim_idle_ms,
                                      claim_every_s=claim_every_s(settings))
                await incidents.setup()
                await work.setup()
                if ready:
                    await ready()
                await matcher.run(incidents, work, stop)
            return
        gateway = build_gateway(settings, kind, redis)
        try:
            sender = Sender(pool, redis, gateway, concurrency=settings.send_concurrency,
                            shards=settings.push_stream_shards)
            senders = ShardedConsumer(
                redis, sender.streams, keys.SENDER_GROUP, settings.consumer_name,
                batch=settings.stream_batch, claim_idle_ms=settings.claim_idle_ms,
                claim_every_s=claim_every_s(settings))
            await senders.setup()
            if ready:
                await ready()
            await run_sender_loop(sender, senders, stop)
        finally:
            await gateway.close()


def run_worker(settings: Settings, kind: str) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(worker_main(settings, kind, stop))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            # The worker ended on its own: that is a failure (it can't reach its store,
            # its configuration is wrong). Exit non-zero so a supervisor restarts it
            # instead of leaving a process that looks alive and does nothing.
            stopping.cancel()
            task.result()
            raise SystemExit(f"{kind} worker stopped unexpectedly")
        log.info("%s worker stopping: finishing in-flight work", kind)
        try:
            await asyncio.wait_for(task, timeout=SHUTDOWN_GRACE_S)
        except TimeoutError:
            log.warning("%s worker did not finish within %ss", kind, SHUTDOWN_GRACE_S)

    log.info("%s worker starting as consumer %s", kind, settings.consumer_name)
    if kind in ("apns", "fcm"):
        tune_gc_for_sending(settings.send_concurrency)
    _run(main())


def tune_gc_for_sending(concurrency: int) -> None:
    """Each send in flight holds a few objects the cyclic collector tracks (the push,
    its request, the callbacks), so with hundreds in flight CPython's default
    young-generation threshold (700 more allocations than frees) starts a collection
    every few dozen pushes that finds nothing to free (its cost: docs/BENCHMARKS.md).
    The threshold is put above what the sends in flight hold,
    and what start-up made is frozen out of the collector's way."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(max(700, 20 * concurrency), older, oldest)


def _run(coro: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]
