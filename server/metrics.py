"""Prometheus metrics of every geopush process, in one place.

Names follow Prometheus' conventions (``geopush_`` prefix, ``_total`` counters, base
units: seconds), and every label has a bounded set of values: agencies (operators
create them; webhooks that fail verification count under ``unverified``), formats,
platforms, outcomes, route templates, stream names. Never a device, incident or token.

The web process serves ``/metrics`` on its own HTTP port; each worker serves it on
``GEOPUSH_METRICS_PORT`` (``serve_metrics``). Gauges of backlogs (streams, outbox,
review queue) are read from Redis and PostgreSQL when scraped, by the process whose
work they measure (``refresh`` callbacks), so a scrape always sees the current value.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

# Seconds: from a few milliseconds (ingest, matching) to the minutes a retried push may take.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0)
_FANOUT_BUCKETS = (0, 1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)

WEBHOOKS = Counter(
    "geopush_webhooks_total",
    "CAD webhooks by agency, body format and decision (alert, review, suppressed:<reason>) "
    "or rejection (rejected:<HTTP status>)",
    ["agency", "format", "decision"])
INGEST_SECONDS = Histogram(
    "geopush_ingest_seconds", "Time to answer a CAD webhook, by body format", ["format"],
    buckets=_LATENCY_BUCKETS)
HTTP_REQUESTS = Counter(
    "geopush_http_requests_total", "HTTP requests by method, route template and status",
    ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "geopush_http_request_seconds", "HTTP request handling time by method and route template",
    ["method", "route"], buckets=_LATENCY_BUCKETS)

MATCH_SECONDS = Histogram(
    "geopush_match_seconds", "Time to match one incident and enqueue its pushes",
    buckets=_LATENCY_BUCKETS)
MATCH_FANOUT = Histogram(
    "geopush_match_fanout_devices",
    "Pushes a matcher enqueued itself per matched incident (a large fan-out's later "
    "pages go out as work items: geopush_fanout_items_total)",
    buckets=_FANOUT_BUCKETS)
REPLICA_READS = Counter(
    "geopush_replica_reads_total",
    "Matcher batches by where their reads went: replica (caught up), lagging or "
    "unavailable (read from the primary instead)", ["outcome"])
REPLICA_LAG_BYTES = Gauge(
    "geopush_replica_lag_bytes",
    "WAL the replica had still to replay when the matcher last checked it")
FANOUT_ITEMS = Counter(
    "geopush_fanout_items_total",
    "Work items of large fan-outs, by event: posted (onto the work stream) or done "
    "(its devices enqueued)", ["event"])
MATCH_RATE_LIMITED = Counter(
    "geopush_match_rate_limited_total",
    "Pushes not enqueued because the device had its hourly share")

UNREPLICATED_WRITES = Counter(
    "geopush_redis_unreplicated_writes_total",
    "Hand-offs to Redis (incident published, pushes enqueued) that fewer replicas than "
    "GEOPUSH_REDIS_WAIT_REPLICAS confirmed in time: lost if their master fails now")

PUSHES = Counter(
    "geopush_pushes_total",
    "Push attempts by platform and outcome (sent, token_gone, retry, failed, dead, withdrawn)",
    ["platform", "outcome"])
DELIVERY_SECONDS = Histogram(
    "geopush_push_delivery_seconds",
    "Incident received by geopush -> push accepted by the gateway, by platform",
    ["platform"], buckets=_LATENCY_BUCKETS)
RETRIES = Counter(
    "geopush_push_retries_total", "Pushes scheduled for another attempt", ["platform"])
DEAD_LETTERS = Counter(
    "geopush_push_dead_letters_total",
    "Pushes given up (retries exhausted before the alert expired), sent to geopush:dead",
    ["platform"])

STREAM_LENGTH = Gauge("geopush_stream_length", "Entries in a Redis stream", ["stream"])
STREAM_PENDING = Gauge(
    "geopush_stream_pending", "Entries read by a consumer group and not yet acknowledged",
    ["stream", "group"])
STREAM_LAG = Gauge(
    "geopush_stream_lag", "Entries in a stream the consumer group has not read yet",
    ["stream", "group"])
RETRY_SCHEDULED = Gauge(
    "geopush_retry_scheduled", "Pushes waiting for their retry time", ["platform"])
OUTBOX_DEPTH = Gauge("geopush_outbox_depth", "Accepted incidents not yet on the Redis stream")
OUTBOX_OLDEST = Gauge(
    "geopush_outbox_oldest_seconds", "Age of the oldest outbox row (0 when empty)")
REVIEW_SIZE = Gauge("geopush_review_queue_size", "Alerts waiting for an editor")
REVIEW_OLDEST = Gauge(
    "geopush_review_queue_oldest_seconds", "Age of the oldest alert waiting for an editor")
RETENTION_DELETED = Counter(
    "geopush_retention_deleted_total", "Rows deleted by the retention job", ["table"])
MAINTENANCE_FAILURES = Counter(
    "geopush_maintenance_failures_total", "Maintenance passes that failed (store unavailable)")

PUSH_OUTCOMES = ("sent", "token_gone", "retry", "failed", "dead", "withdrawn")


class PushMetrics:
    """A sender's metrics, bound to its platform once (label lookups off the hot path).
    The sender calls ``recorded`` once a batch's outcomes are in the deliveries table."""

    def __init__(self, platform: str) -> None:
        self._outcomes = {o: PUSHES.labels(platform, o) for o in PUSH_OUTCOMES}
        self._delivery = DELIVERY_SECONDS.labels(platform)
        self._retries = RETRIES.labels(platform)
        self._dead = DEAD_LETTERS.labels(platform)

    def recorded(self, outcomes: Iterable[tuple[str, int | None]]) -> None:
        """(outcome, incident received -> gateway accepted in ms, for sent pushes)."""
        for outcome, latency_ms in outcomes:
            self._outcomes[outcome].inc()
            if outcome == "sent" and latency_ms is not None:
                self._delivery.observe(latency_ms / 1000)
            elif outcome == "retry":
                self._retries.inc()
            elif outcome == "dead":
                self._dead.inc()


Refresh = Callable[[], Awaitable[None]]


def exposition(registry: CollectorRegistry = REGISTRY) -> web.Response:
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def metrics_handler(refresh: Refresh | None = None) -> Callable[[web.Request],
                                                                Awaitable[web.Response]]:
    """A ``GET /metrics`` handler; ``refresh`` updates the backlog gauges first (a
    failure leaves them as they were and is logged: the counters are still served)."""

    async def handler(request: web.Request) -> web.Response:
        if refresh is not None:
            try:
                await refresh()
            except Exception as exc:  # a store blip must not hide the other metrics
                log.warning("refreshing backlog metrics failed: %s", exc)
        return exposition()

    return handler


async def serve_metrics(host: str, port: int, refresh: Refresh | None = None) -> web.AppRunner:
    """A worker's metrics endpoint; the caller ``cleanup()``s the runner."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(refresh))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner listens on (for port 0)."""
    address: Any = runner.addresses[0]
    return int(address[1])


def route_label(request: web.Request) -> str:
    """The route template ("/v1/devices/{device}/zones"), never the concrete path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def http_metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    route = route_label(request)
    with HTTP_SECONDS.labels(request.method, route).time():
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            HTTP_REQUESTS.labels(request.method, route, str(exc.status)).inc()
            raise
    HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
    return response
