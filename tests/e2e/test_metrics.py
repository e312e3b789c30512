"""Prometheus metrics: the web process's /metrics and each worker's GEOPUSH_METRICS_PORT,
read back through prometheus_client's own parser, after real traffic."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from server import keys
from server.dev.devenv import free_port
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import POINT, circle, create_agency, create_device, incident
from tests.helpers import post_incident as post
from workers.runner import worker_main

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return parse(await resp.text())


async def web_metrics(stack: Stack) -> Samples:
    resp = await stack.client.get("/metrics")
    assert resp.status == 200
    return parse(await resp.text())


async def test_web_metrics_count_webhooks_by_agency_format_and_decision(stack: Stack) -> None:
    secret = await create_agency(stack.client)
    before = await web_metrics(stack)
    assert (await post(stack.client, secret, incident("M1")))[0] == 202
    assert (await post(stack.client, secret, incident("M2", call_type="Aid Response")))[0] == 202
    assert (await post(stack.client, "wrong", incident("M3"), agency_id="no-such-agency"))[0] \
        == 401
    after = await web_metrics(stack)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    webhooks = "geopush_webhooks_total"
    assert delta(webhooks, agency="seattle-fire", format="json", decision="alert") == 1
    assert delta(webhooks, agency="seattle-fire", format="json",
                 decision="suppressed:category") == 1
    # An unverified request never mints a label value from its URL.
    assert delta(webhooks, agency="unverified", format="json", decision="rejected:401") == 1
    assert not any("no-such-agency" in str(labels) for _, labels in after)
    assert delta("geopush_ingest_seconds_count", format="json") == 3
    route = "/v1/agencies/{agency}/incidents"
    assert delta("geopush_http_requests_total", method="POST", route=route, status="202") == 2


async def test_workers_serve_delivery_latency_outcomes_and_backlogs(stack: Stack) -> None:
    ports = {kind: free_port() for kind in ("matcher", "apns", "relay")}
    tasks = [asyncio.create_task(worker_main(
        replace(stack.settings, metrics_port=port, consumer_name=f"metrics-{kind}"),
        kind, stack.stop)) for kind, port in ports.items()]
    stack.extra.extend(tasks)
    url = {kind: f"http://127.0.0.1:{port}/metrics" for kind, port in ports.items()}

    async def up() -> bool:
        try:
            await scrape(url["relay"])
            await scrape(url["apns"])
            return True
        except aiohttp.ClientError:
            return False

    await wait_for(up, what="the workers' metrics ports")
    before = await scrape(url["apns"])
    secret = await create_agency(stack.client)
    await create_device(stack.client, "apns", secrets.token_hex(32), circle(*POINT, 800))
    status, accepted = await post(stack.client, secret, incident("M10"))
    assert (status, accepted["decision"]) == (202, "alert")
    await wait_for(lambda: len(stack.apns.deliveries) >= 1, what="the push")
    await stack.drained()

    async def recorded() -> bool:
        after = await scrape(url["apns"])
        return value(after, "geopush_pushes_total", platform="apns", outcome="sent") > \
            value(before, "geopush_pushes_total", platform="apns", outcome="sent")

    await wait_for(recorded, what="the sent push in the apns sender's metrics")
    apns = await scrape(url["apns"])
    assert value(apns, "geopush_push_delivery_seconds_count", platform="apns") >= 1
    assert value(apns, "geopush_push_delivery_seconds_bucket", platform="apns", le="+Inf") >= 1
    stream = keys.push_stream("apns", 0)   # every shard's stream is reported
    assert value(apns, "geopush_stream_pending", stream=stream, group="senders") == 0
    assert value(apns, "geopush_stream_lag", stream=stream, group="senders") == 0
    assert ("geopush_stream_length", frozenset({("stream", stream)})) in apns

    matcher = await scrape(url["matcher"])
    assert value(matcher, "geopush_match_fanout_devices_count") >= 1
    assert ("geopush_stream_lag",
            frozenset({("stream", "geopush:incidents"), ("group", "matchers")})) in matcher

    # The relay reports the queues PostgreSQL holds: one held for review shows up.
    review_secret = await create_agency(stack.client, "review-fd", review=True)
    status, accepted = await post(stack.client, review_secret, incident("M11"),
                                  agency_id="review-fd")
    assert accepted["decision"] == "review"
    relay = await scrape(url["relay"])
    assert value(relay, "geopush_review_queue_size") == 1
    assert value(relay, "geopush_review_queue_oldest_seconds") >= 0
    assert value(relay, "geopush_outbox_depth") == 0
