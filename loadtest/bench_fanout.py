"""Fan-out benchmark: how fast a metro's incidents reach every phone they are for,
next to the fake gateways' own ceiling measured in the same run (issue 13).

    python -m loadtest.bench_fanout [--devices 1000000] [--near-me 0.1]
                                    [--hourly-limit 10] [--small 10] [--area-km 2.5]
                                    [--rates 0.5,0.75,1,1.25,1.5,2] [--rate-seconds 20]
                                    [--matchers 1] [--apns-senders 1] [--fcm-senders 1]
                                    [--webs 1] [--fake-processes 2] [--redis-cluster]
                                    [--worker-env NAME=VALUE]
                                    [--json PATH] [--keep-services]

Needs (Debian packages): ``nghttp2-client`` (h2load), ``postgresql`` + ``postgis`` and
``redis-server`` (unless GEOPUSH_DATABASE_URL and GEOPUSH_REDIS_URL are set).

What one run does:

1. PostgreSQL: a fresh copy of a template database holding ``--devices`` phones over
   greater Seattle with one 300 m–2 km circle each, half APNs and half FCM, a share
   ``--near-me`` of them also "near me" (``loadtest/fanout_seed.py``; the template is
   seeded once, about a minute per million, and copied in seconds by later runs).
   Redis: a fresh private server (or, with ``--redis-cluster``, three masters joined
   into a Redis Cluster); the near-me phones report their positions into it.
2. Starts ``make run``'s process set with the counts given: web, matcher(s), APNs and
   FCM senders, the outbox relay, and the fake APNs (TLS) and fake FCM as fleets of
   ``--fake-processes`` processes each (``loadtest/delivery/fleet.py``). Settings as in
   production (log level INFO); the hourly device limit is ``--hourly-limit`` (0: off).
3. Warm-up: one fire, its pushes awaited (connections, TLS, tokens established).
4. Small fan-outs: ``--small`` structure fires at real Seattle Fire incident locations
   (``loadtest/data``), one at a time on an idle system, each posted as a CAD would
   (signed native JSON) and followed to its last push.
5. The large fan-out: an explosion with a CAP circle of ``--area-km`` downtown.
   Then the ceiling: h2load pushes the same number of requests, per platform, into the
   same fake fleets, both platforms at once, with requests like the senders' (same
   headers, payload, provider token / bearer token).
6. Sustained: fires at each rate of ``--rates`` (incidents per second) for
   ``--rate-seconds``, the push queues (lengths of the Redis streams with a consumer
   group) and the pushes still due (those of the incidents posted, less those the
   fakes received) sampled every 0.5 s; a rate is kept when, as the next fire would be
   due at the window's end, less than one fire's pushes are still to go (each fire is
   cleared before the next; otherwise the rest grows with every fire). Stops at the
   first rate that is not kept.
7. Checks, for every incident posted: each device of its audience (found again with
   the matcher's own ``find_audience``) pushed once, or held back by the hourly limit
   having been reached; no device twice; no push outside the audience; every push the
   fakes received in phases 3–5 matched to a ``deliveries`` row and back; the fakes'
   total equal to the table's.
8. Times the match query against PostGIS alone (``SELECT count(*)`` of the zones
   meeting the same public geometry), warm, per incident of phases 4–5.

Reported per incident: matcher time (the matchers' ``geopush_match_seconds``, summed:
matching and enqueueing, less any work handed out to other matchers), the matchers'
CPU from the post to the last push (and per push), first and last push after the 202
(the fakes' receive times), pushes/s; the ratio
ceiling-time / geopush-time of the large fan-out (``--area-km``); medians of the
small ones; the highest sustained rate as a share of the ceiling; peak RSS of the
matcher and senders; the checks. ``--json PATH`` keeps everything. It exits non-zero
when a check fails.

Figures on a shared machine are noisy: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench_common import BenchError, require_tools
from loadtest.delivery.h2load import Ceiling, run_h2load
from loadtest.delivery.procstats import cpu_used
from loadtest.fanout import WORKDIR
from loadtest.fanout.cad import Cad, Location, Posted, agency_secret, locations
from loadtest.fanout.outcome import (
    Arrival,
    Checks,
    IncidentFigures,
    QueryTiming,
    arrivals_since,
    by_incident,
    check,
    median,
    query_timings,
)
from loadtest.fanout.stack import (
    Counts,
    FanoutServices,
    Stack,
    async_redis_client,
    redis_client,
    start_services,
    start_stack,
)
from loadtest.fanout_seed import SeedSpec, report_positions
from server import keys

# Targets (issue 13, this 2-core machine)
TARGET_SMALL_FIRST_S = 0.150
TARGET_SMALL_LAST_S = 1.3
TARGET_AREA_RATIO = 0.7
TARGET_MATCHER_RSS_MB = 250.0
TARGET_SENDER_RSS_MB = 150.0
TARGET_QUERY_RATIO = 1.5
TARGET_MATCHER_US_PER_PUSH = 15.0
LOCATION_TTL_S = 7200.0        # GEOPUSH_LOCATION_TTL_MINUTES' default
STALL_TIMEOUT_S = 90.0


# -- the queues ---------------------------------------------------------------------------


class Queues:
    """Lengths of the Redis streams the workers consume (found once: every stream with
    a consumer group), split into push streams (``…:push:…``) and the rest (incidents,
    and whatever work the matchers hand each other). Consumers delete what they
    acknowledge, so a stream's length is what is still to do."""

    def __init__(self, services: FanoutServices) -> None:
        self.client = redis_client(services.redis_url, services.is_cluster)
        self.streams: list[str] = []

    def discover(self) -> None:
        found = []
        for key in self.client.scan_iter(match=f"{keys.PREFIX}:*", count=1000, _type="stream"):
            if self.client.xinfo_groups(key):
                found.append(key)
        self.streams = sorted(found)

    def lengths(self) -> tuple[int, int]:
        """(pushes waiting, other entries waiting)."""
        push = other = 0
        for key in self.streams:
            n = int(self.client.xlen(key))
            if ":push:" in key:
                push += n
            else:
                other += n
        return push, other

    def close(self) -> None:
        self.client.close()


def wait_quiet(stack: Stack, queues: Queues, timeout: float = 600.0) -> float:
    """Until the queues are empty and the fakes' count stopped moving; the time."""
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    while True:
        stack.check_alive()
        push, other = queues.lengths()
        count = stack.delivered()
        now = time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        elif push == 0 and other == 0 and now - last_change >= 0.6:
            return time.time()
        if now - last_change > STALL_TIMEOUT_S:
            raise BenchError(f"no push for {STALL_TIMEOUT_S:.0f} s with {push} pushes and "
                             f"{other} other entries queued; logs in {stack.log_dir}")
        if now > deadline:
            raise BenchError(f"not quiet after {timeout:.0f} s; logs in {stack.log_dir}")
        time.sleep(0.2)


# -- phases ------------------------------------------------------------------------------


@dataclass
class RateStep:
    rate: float                  # incidents per second offered
    incidents: int
    seconds: float               # posting window
    pushes: int                  # pushes the fakes received for them
    offered_pushes_per_s: float
    delivered_pushes_per_s: float    # at the fakes, during the window
    queue_slope: float           # pushes/s the queue grew by (2nd half, least squares)
    end_queue: int               # pushes still to go when the window closed
    end_streams: tuple[int, int]     # then: entries on the push streams, on the others
    drain_s: float               # from the last post to quiet
    kept: bool
    # (s, incidents posted, pushes delivered, push stream entries, other entries)
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def sustained(stack: Stack, queues: Queues, cad: Cad, where: list[Location], rate: float,
              seconds: float, posted: list[Posted]) -> RateStep:
    """Fires at ``rate`` a second for ``seconds``; whether the queue stops growing.

    The queue is counted in pushes, whatever holds them (a matcher may keep a large
    fan-out's later devices as work items until the push streams have room): the
    pushes the incidents posted so far are due, less those the fakes received. Each
    incident is taken as due the step's mean (every push is delivered by quiet);
    fires at different places differ by a few per cent, noise the fit averages out."""
    samples: list[tuple[float, int, int, int, int]] = []
    stop = threading.Event()
    started = time.monotonic()
    before_count = stack.delivered()
    sent = [0]

    def sample() -> None:
        sampler = Queues(stack.services)
        sampler.streams = queues.streams
        try:
            while not stop.is_set():
                push, other = sampler.lengths()
                delivered = stack.delivered() - before_count
                samples.append((time.monotonic() - started, sent[0], delivered, push, other))
                stop.wait(0.5)
        finally:
            sampler.close()

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    count = max(1, round(rate * seconds))
    try:
        for n in range(count):
            due = started + n / rate
            time.sleep(max(0.0, due - time.monotonic()))
            posted.append(cad.fire(where.pop(0), len(posted)))
            sent[0] += 1
        time.sleep(max(0.0, started + count / rate - time.monotonic()))
        window = time.monotonic() - started
        delivered_in_window = stack.delivered() - before_count
    finally:
        stop.set()
        thread.join()
    last_post = time.time()
    quiet = wait_quiet(stack, queues)
    pushes = stack.delivered() - before_count
    mean = pushes / count
    queue = [(t, n * mean - d) for t, n, d, _, _ in samples if t <= window]
    slope = _slope([(t, q) for t, q in queue if t >= window / 2])
    offered = pushes / window if window else 0.0
    to_go = count * mean - delivered_in_window
    # Kept: when the next fire would be due, less than one fire's pushes are still to
    # go, i.e. each fire is cleared before the next; otherwise what is left over grows
    # with every fire. (Read at that moment, the queue is at the low point of its saw
    # tooth; a fit over the tooth itself swings by hundreds of pushes a second.)
    kept = to_go < mean
    last = samples[-1] if samples else (0.0, 0, 0, 0, 0)
    return RateStep(rate, count, round(window, 1), pushes, round(offered, 1),
                    round(delivered_in_window / window, 1), round(slope, 1),
                    round(to_go), (last[3], last[4]),
                    round(quiet - last_post, 1), kept,
                    [(round(t, 1), n, d, p, o) for t, n, d, p, o in samples])


def ceiling(stack: Stack, tmp: Path, counts: dict[str, int]) -> dict[str, Ceiling]:
    """h2load with ``counts[platform]`` requests into each platform's fleet, both at once."""
    out: dict[str, Ceiling] = {}
    errors: list[BaseException] = []

    def one(platform: str) -> None:
        try:
            n = counts[platform]
            out[platform] = run_h2load(
                platform, stack.fleets[platform], stack.services, stack.fleets[platform].certs_dir,
                tmp, duration=0, clients=min(16, n), streams=100, threads=1, requests=n,
                apns_token=stack.apns_token)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p,)) for p in counts if counts[p] > 0]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


# -- the run ---------------------------------------------------------------------------


def _cpu_per_push(what: str, cpu_s: dict[str, float], pushes: int) -> str:
    """Each process group's CPU a push, and all of geopush's (everything but the
    fakes): what the send path costs, less noisy than the times."""
    if not pushes:
        return f"{what} CPU a push: no pushes"
    ours = sum(v for k, v in cpu_s.items() if k != "fakes")
    return (f"{what} CPU a push (µs): " + ", ".join(
        f"{k} {v / pushes * 1e6:.0f}" for k, v in sorted(cpu_s.items()) if v)
        + f"; geopush {ours / pushes * 1e6:.0f}")


@dataclass
class Report:
    args: dict[str, str]
    devices: int
    near_me_devices: int
    warmup: IncidentFigures | None = None
    small: list[IncidentFigures] = field(default_factory=list)
    area: IncidentFigures | None = None
    area_ceiling: dict[str, Ceiling] = field(default_factory=dict)
    area_cpu_cores: dict[str, float] = field(default_factory=dict)
    # CPU seconds each process group used over the small fan-outs (post to quiet).
    small_cpu_s: dict[str, float] = field(default_factory=dict)
    area_cpu_s: dict[str, float] = field(default_factory=dict)
    steps: list[RateStep] = field(default_factory=list)
    rss_mb: dict[str, float] = field(default_factory=dict)
    queries: list[QueryTiming] = field(default_factory=list)
    checks: Checks | None = None
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    retries_left: int = 0

    # -- figures --
    @property
    def ceiling_s(self) -> float:
        return max((c.seconds for c in self.area_ceiling.values()), default=0.0)

    @property
    def ceiling_rate(self) -> float:
        n = sum(c.succeeded for c in self.area_ceiling.values())
        return n / self.ceiling_s if self.ceiling_s else 0.0

    @property
    def area_ratio(self) -> float:
        if self.area is None or self.area.last_push_s <= 0:
            return 0.0
        return self.ceiling_s / self.area.last_push_s

    @property
    def sustained_rate(self) -> RateStep | None:
        kept = [s for s in self.steps if s.kept]
        return max(kept, key=lambda s: s.rate) if kept else None

    @property
    def sustained_share(self) -> float:
        best = self.sustained_rate
        if best is None or not self.ceiling_rate:
            return 0.0
        return best.offered_pushes_per_s / self.ceiling_rate

    def problems(self) -> list[str]:
        out = list(self.checks.problems) if self.checks else ["not checked"]
        bad = {k: v for k, v in self.exit_codes.items() if v != 0}
        if bad:
            out.append(f"exit codes {bad}")
        if self.retries_left:
            out.append(f"{self.retries_left} pushes left in retry schedules")
        return out


def _ms(s: float) -> str:
    return f"{s * 1000:,.0f} ms" if s < 10 else f"{s:,.1f} s"


def render(r: Report) -> str:
    redis = "a 3-master cluster" if r.args["redis_cluster"] == "True" else "one server"
    lines = [f"{r.devices:,} devices ({r.near_me_devices:,} near me), hourly limit "
             f"{r.args['hourly_limit']}, Redis {redis}"]
    lines.append(f"{'incident':30} {'pushes':>7} {'match':>9} {'matcher CPU':>16} "
                 f"{'first':>9} {'last':>9} {'push/s':>8}")
    rows = ([("warm-up", r.warmup)] if r.warmup else []) + \
        [(f"fire {n + 1}", f) for n, f in enumerate(r.small)] + \
        ([(f"area {r.args['area_km']} km", r.area)] if r.area else [])
    for label, f in rows:
        assert f is not None
        cpu = f"{_ms(f.matcher_cpu_s)} {f.matcher_us_per_push:3.0f} µs"
        lines.append(f"{label + ' ' + f.incident_id[:8]:30} {f.pushes:7,} "
                     f"{_ms(f.matcher_s):>9} {cpu:>16} {_ms(f.first_push_s):>9} "
                     f"{_ms(f.last_push_s):>9} {f.pushes_per_s:8,.0f}")
    if r.small:
        first = median([f.first_push_s for f in r.small])
        last = median([f.last_push_s for f in r.small])
        size = median([float(f.pushes) for f in r.small])
        lines.append(f"small fan-outs (median of {len(r.small)}, {size:,.0f} pushes): first push "
                     f"{_ms(first)} (target <= {_ms(TARGET_SMALL_FIRST_S)}: "
                     f"{'met' if first <= TARGET_SMALL_FIRST_S else 'NOT met'}), last push "
                     f"{_ms(last)} (target <= {_ms(TARGET_SMALL_LAST_S)}: "
                     f"{'met' if last <= TARGET_SMALL_LAST_S else 'NOT met'})")
    followed = [f for f in (*r.small, r.area) if f is not None]
    if followed:
        us = [f.matcher_us_per_push for f in followed]
        most = max(us)
        lines.append(f"matcher CPU per push: median {statistics.median(us):.0f} µs, worst "
                     f"{most:.0f} µs (target <= {TARGET_MATCHER_US_PER_PUSH:.0f}: "
                     f"{'met' if most <= TARGET_MATCHER_US_PER_PUSH else 'NOT met'})")
    if r.area is not None and r.area_ceiling:
        per_platform = ", ".join(f"{p} {x.succeeded:,} in {x.seconds:.2f} s"
                                 for p, x in r.area_ceiling.items())
        lines.append(
            f"large fan-out: {r.area.pushes:,} pushes, last {r.area.last_push_s:.2f} s after "
            f"the 202; ceiling (h2load, same requests, same fleets): {r.ceiling_s:.2f} s "
            f"({per_platform}); "
            f"ratio {r.area_ratio:.2f} (target >= {TARGET_AREA_RATIO}: "
            f"{'met' if r.area_ratio >= TARGET_AREA_RATIO else 'NOT met'})")
        lines.append("large fan-out CPU (cores): " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(r.area_cpu_cores.items())))
        lines.append(_cpu_per_push("large fan-out", r.area_cpu_s, r.area.pushes))
    if r.small:
        lines.append(_cpu_per_push("small fan-outs", r.small_cpu_s,
                                   sum(f.pushes for f in r.small)))
    for s in r.steps:
        lines.append(
            f"rate {s.rate:g}/s: {s.incidents} fires, {s.pushes:,} pushes, offered "
            f"{s.offered_pushes_per_s:,.0f}/s, delivered {s.delivered_pushes_per_s:,.0f}/s in "
            f"the window; queue growth {s.queue_slope:+,.0f} pushes/s, {s.end_queue:,} to go "
            f"at the end; drained {s.drain_s:.1f} s after the last; "
            f"{'kept' if s.kept else 'NOT kept (queue grows)'}")
    best = r.sustained_rate
    if r.steps:
        lines.append(
            "sustained: " + ("no rate kept" if best is None else
                             f"{best.rate:g} fires/s = {best.offered_pushes_per_s:,.0f} pushes/s "
                             f"= {r.sustained_share:.2f} of the ceiling "
                             f"({r.ceiling_rate:,.0f} req/s)"))
    rss = r.rss_mb
    matcher, senders = rss.get("matcher", 0.0), max(rss.get("apns", 0.0), rss.get("fcm", 0.0))
    lines.append(f"peak RSS: matcher {matcher:.0f} MB (target < {TARGET_MATCHER_RSS_MB:.0f}: "
                 f"{'met' if matcher < TARGET_MATCHER_RSS_MB else 'NOT met'}), senders "
                 f"apns {rss.get('apns', 0):.0f} / fcm {rss.get('fcm', 0):.0f} MB (target < "
                 f"{TARGET_SENDER_RSS_MB:.0f}: "
                 f"{'met' if senders < TARGET_SENDER_RSS_MB else 'NOT met'}), web "
                 f"{rss.get('web', 0):.0f} MB")
    if r.queries:
        worst = max(r.queries, key=lambda q: q.ratio)
        ratios = [q.ratio for q in r.queries]
        lines.append(
            f"match query / PostGIS count, same public geometry: median "
            f"{statistics.median(ratios):.2f}, worst {worst.ratio:.2f} "
            f"({worst.match_ms:.1f} / {worst.bare_ms:.1f} ms, {worst.zones:,} zones, "
            f"{worst.matched:,} devices) (target <= {TARGET_QUERY_RATIO}: "
            f"{'met' if worst.ratio <= TARGET_QUERY_RATIO else 'NOT met'})")
    c = r.checks
    if c is not None:
        lines.append(
            f"checks: {c.incidents} incidents, {c.audience:,} audience, {c.delivered:,} "
            f"delivered, {c.held_by_limit:,} held by the hourly limit, {c.lost} lost, "
            f"{c.duplicates} duplicates, {c.over_limit} over the limit; "
            f"{c.fakes_checked:,} pushes compared one by one with the fakes")
    problems = r.problems()
    lines.append("nothing lost, no device twice: " + (
        "OK" if not problems else "PROBLEMS: " + "; ".join(problems)))
    return "\n".join(lines)


def run(args: argparse.Namespace, services: FanoutServices, tmp: Path) -> Report:
    spec = SeedSpec(args.devices, args.near_me)
    secret = agency_secret(services.database_url)

    async def positions() -> int:
        client = async_redis_client(services.redis_url, services.is_cluster)
        try:
            return await report_positions(services.database_url, client, spec, LOCATION_TTL_S)
        finally:
            await client.aclose()

    near_me = asyncio.run(positions())
    report = Report({k: str(v) for k, v in vars(args).items()}, args.devices, near_me)
    counts = Counts(web=args.webs, matcher=args.matchers, apns=args.apns_senders,
                    fcm=args.fcm_senders, relay=1, fake_processes=args.fake_processes)
    certs_dir = tmp / "certs"
    stack = start_stack(services, counts, certs_dir, tmp, hourly_limit=args.hourly_limit,
                        admin_token=secrets.token_hex(16),
                        extra_env=dict(e.split("=", 1) for e in args.worker_env))
    queues = Queues(services)
    posted: list[Posted] = []
    compared: list[Arrival] = []
    ceiling_requests = 0
    try:
        where = locations()
        cad = Cad(stack.web_url, secret, secrets.token_hex(3))

        def one(post: Any, cpu: dict[str, float] | None = None,
                cpu_s: dict[str, float] | None = None) -> IncidentFigures:
            """Post one incident and follow it to its last push; with ``cpu``, the
            cores each process group used from the post to quiet; ``cpu_s`` adds up
            their CPU seconds."""
            before = stack.matcher_metrics()["match_seconds"]
            cpu_before, started = stack.cpu(), time.monotonic()
            since = time.time() - 0.001
            p = post()
            posted.append(p)
            wait_quiet(stack, queues)
            took, cpu_after = time.monotonic() - started, stack.cpu()
            used = {k: cpu_used(cpu_before[k], cpu_after[k]) for k in cpu_after}
            if cpu is not None:
                cpu.update({k: round(v / took, 2) for k, v in used.items()})
            if cpu_s is not None:
                for k, v in used.items():
                    cpu_s[k] = cpu_s.get(k, 0.0) + v
            match_s = stack.matcher_metrics()["match_seconds"] - before
            got = by_incident(arrivals_since(stack, since))
            mine = got.get(p.incident_id, [])
            compared.extend(a for rows in got.values() for a in rows)
            print(f"[fanout] {p.kind} {p.incident_id}: {len(mine):,} pushes", flush=True)
            return IncidentFigures.of(p, mine, match_s, used.get("matcher", 0.0))

        queues.discover()   # every consumer group exists once the workers are ready
        print("[fanout] warm-up", flush=True)
        report.warmup = one(lambda: cad.fire(where.pop(), len(posted)))
        for _ in range(args.small):
            time.sleep(args.pause)
            report.small.append(one(lambda: cad.fire(where.pop(0), len(posted)),
                                    cpu_s=report.small_cpu_s))
        if args.area_km > 0:
            time.sleep(args.pause)
            report.area = one(lambda: cad.area(args.area_km), report.area_cpu_cores,
                              report.area_cpu_s)
            print("[fanout] ceiling: h2load, the same requests into the same fleets",
                  flush=True)
            counts_now = {"apns": report.area.apns, "fcm": report.area.fcm}
            delivered_before = stack.delivered()
            report.area_ceiling = ceiling(stack, tmp, counts_now)
            ceiling_requests = stack.delivered() - delivered_before
        for rate in args.rates:
            if len(where) < rate * args.rate_seconds:
                print(f"[fanout] not enough locations left for {rate}/s", flush=True)
                break
            time.sleep(args.pause)
            print(f"[fanout] sustained: {rate:g} fires/s for {args.rate_seconds:g} s",
                  flush=True)
            step = sustained(stack, queues, cad, where, rate, args.rate_seconds, posted)
            report.steps.append(step)
            print(f"[fanout] {rate:g}/s {'kept' if step.kept else 'not kept'}", flush=True)
            if not step.kept:
                break
        report.rss_mb = stack.peak_rss()
        fakes_total = stack.delivered() - ceiling_requests
        client = redis_client(services.redis_url, services.is_cluster)
        try:
            report.retries_left = sum(
                int(client.zcard(k)) for k in
                client.scan_iter(match=f"{keys.PREFIX}:*retry*", count=1000, _type="zset"))
        finally:
            client.close()
    finally:
        queues.close()
        report.exit_codes = stack.stop()
    print("[fanout] checking every incident's audience against the deliveries", flush=True)
    report.checks = asyncio.run(check(stack, posted, compared, fakes_total,
                                      hourly_limit=args.hourly_limit,
                                      location_ttl_s=LOCATION_TTL_S))
    timed = [f.incident_id for f in report.small] + ([report.area.incident_id]
                                                     if report.area else [])
    report.queries = asyncio.run(query_timings(stack, timed, LOCATION_TTL_S))
    return report


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()] if text else []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_fanout",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--near-me", type=float, default=0.1,
                        help="share of devices using near me (default 0.1, issue 16)")
    parser.add_argument("--hourly-limit", type=int, default=10,
                        help="GEOPUSH_DEVICE_PUSHES_PER_HOUR (default 10; 0: off)")
    parser.add_argument("--small", type=int, default=10, help="small fan-outs, one at a time")
    parser.add_argument("--area-km", type=float, default=2.5,
                        help="radius of the large CAP circle downtown (default 2.5: the "
                             "public area, widened to the grid, meets about 80,000 zones "
                             "at 1M devices; 0: none)")
    parser.add_argument("--rates", type=_rates, default=_rates("0.5,0.75,1,1.25,1.5,2"),
                        help="sustained incident rates to try, per second ('': none)")
    parser.add_argument("--rate-seconds", type=float, default=20.0)
    parser.add_argument("--pause", type=float, default=1.0,
                        help="idle seconds before each measured incident")
    parser.add_argument("--webs", type=int, default=1)
    parser.add_argument("--matchers", type=int, default=1)
    parser.add_argument("--apns-senders", type=int, default=1)
    parser.add_argument("--fcm-senders", type=int, default=1)
    parser.add_argument("--fake-processes", type=int, default=2,
                        help="fake gateway processes per platform")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for every geopush process, e.g. "
                             "GEOPUSH_PUSH_BACKLOG_LIMIT=20000 (repeatable)")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="a private 3-master Redis Cluster instead of one Redis")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep-services", action="store_true",
                        help="leave the private PostgreSQL and Redis running")
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def as_json(report: Report) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
        **asdict(report),
        "ceiling_s": report.ceiling_s, "ceiling_rate": report.ceiling_rate,
        "area_ratio": report.area_ratio, "sustained_share": report.sustained_share,
        "queries": [{**asdict(q), "ratio": q.ratio} for q in report.queries],
        "problems": report.problems(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_tools(["h2load"])
    WORKDIR.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    services = start_services(SeedSpec(args.devices, args.near_me), cluster=args.redis_cluster)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=WORKDIR))
    try:
        report = run(args, services, tmp)
    finally:
        if not args.keep_services:
            services.stop()
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(report), indent=2, default=str))
    if report.problems():
        sys.exit(f"bench: checks failed; the processes' logs are in {tmp}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
