"""The web process's composition root: ``create_app(settings)``.

Each shared resource is one cleanup context (create, yield, close), appended in
dependency order, so teardown runs in reverse and only for what started.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from server.metrics import bound_port, http_metrics_middleware, metrics_handler, serve_metrics
from server.settings import Settings
from server.store.db import create_pool
from server.store.publish import OutboxCleaner
from server.store.ratelimit import LoginLimiter, RateLimiter
from server.store.redisclient import connect, replica_wait
from server.web import openapi
from server.web.agency_cache import AgencyCache
from server.web.appkeys import (
    AGENCIES,
    LIMITER,
    LOGINS,
    OUTBOX,
    POOL,
    PUBLIC_CACHE,
    REDIS,
    REGISTRATION_CHECK,
    REVIEW_FEED,
    SETTINGS,
)
from server.web.openapi import Body, doc
from server.web.problems import problem_middleware
from server.web.public_cache import PublicCache
from server.web.registration import RegistrationCheck, load_check
from server.web.review_feed import ReviewFeed
from server.web.routes import (
    admin,
    alerts,
    console,
    devices,
    health,
    incidents,
    neighbourhoods,
    public_map,
    review,
    session,
    transparency,
    users,
)

log = logging.getLogger(__name__)


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    # Lazy: min_size=0 lets the process start (and answer /healthz and 503s) while
    # PostgreSQL is still coming up or briefly down.
    app[POOL] = await create_pool(app[SETTINGS].database_url, min_size=0, max_size=20)
    app[AGENCIES] = AgencyCache(app[POOL])
    app[OUTBOX] = OutboxCleaner(app[POOL], replica_wait=replica_wait(app[SETTINGS]))
    app[OUTBOX].start()
    yield
    await app[OUTBOX].stop()
    await app[POOL].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[REDIS] = await connect(
        settings.redis_url, settings.redis_mode,
        # Longer than a replica wait (which blocks its connection's read until then).
        socket_timeout=max(2.0, settings.redis_wait_timeout_ms / 1000 + 1),
        socket_connect_timeout=2, health_check_interval=30,
    )
    app[LIMITER] = RateLimiter(app[REDIS])
    app[LOGINS] = LoginLimiter(app[REDIS])
    yield
    await app[REDIS].aclose()


async def _review_feed(app: web.Application) -> AsyncIterator[None]:
    app[REVIEW_FEED] = ReviewFeed(app[SETTINGS].database_url)
    app[REVIEW_FEED].start()
    yield
    await app[REVIEW_FEED].stop()


async def _own_metrics(app: web.Application) -> AsyncIterator[None]:
    """With GEOPUSH_METRICS_PORT set, this process's metrics on a port of its own too:
    web processes sharing one HTTP port (GEOPUSH_HTTP_REUSE_PORT) answer its /metrics
    at random, so Prometheus scrapes each at its own port instead."""
    settings = app[SETTINGS]
    if settings.metrics_port is None:
        yield
        return
    runner = await serve_metrics(settings.metrics_host, settings.metrics_port)
    log.info("web metrics on http://%s:%d/metrics", settings.metrics_host, bound_port(runner))
    yield
    await runner.cleanup()


async def _end_event_streams(app: web.Application) -> None:
    # Before the server waits for handlers to finish: the consoles' streams never do.
    app[REVIEW_FEED].close_streams()


def create_app(settings: Settings,
               registration_check: RegistrationCheck | None = None) -> web.Application:
    """``registration_check`` may refuse device registrations (App Attest, Play
    Integrity); GEOPUSH_REGISTRATION_CHECK names one when none is given."""
    app = web.Application(middlewares=[http_metrics_middleware, problem_middleware],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    if registration_check is None and settings.registration_check:
        registration_check = load_check(settings.registration_check)
    app[REGISTRATION_CHECK] = registration_check
    app.cleanup_ctx.append(_postgres)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_review_feed)
    app.cleanup_ctx.append(_own_metrics)
    app.on_shutdown.append(_end_event_streams)
    app[PUBLIC_CACHE] = PublicCache()
    for table in (health.routes, incidents.routes, admin.routes, devices.routes,
                  transparency.routes, neighbourhoods.routes, openapi.routes, session.routes,
                  users.routes,
                  review.routes, alerts.routes, public_map.routes, console.routes):
        app.router.add_routes(table)
    app.router.add_get("/metrics", doc(
        "Prometheus metrics of this process", "operations", store=False,
        responses={200: Body("text/plain", {"type": "string"})})(metrics_handler()))
    return app
