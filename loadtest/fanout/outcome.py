"""What became of the incidents: the pushes the fakes received (per incident, per
device, when), the ``deliveries`` table, the audience the matcher was to reach, and
the checks: nothing lost, no device twice, the hourly limit kept."""

from __future__ import annotations

import statistics
import time
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from loadtest.bench_common import http_json
from loadtest.fanout.cad import Posted
from loadtest.fanout.stack import Stack, async_redis_client
from server.domain.categories import MOST_SEVERE
from server.store import matching, positions
from server.store.audience import Target, find_audience, near_positions


@dataclass(frozen=True)
class Arrival:
    platform: str
    incident_id: str
    token: str
    at: float


def arrivals_since(stack: Stack, since: float) -> list[Arrival]:
    """Every push the fakes received after ``since`` (unix time), slimmed down."""
    out: list[Arrival] = []
    for platform, fleet in stack.fleets.items():
        for port in fleet.control_ports:
            query = urllib.parse.urlencode({"since": f"{since:.6f}"})
            for d in http_json(f"http://127.0.0.1:{port}/_fake/deliveries?{query}",
                               timeout=600):
                if platform == "apns":
                    incident = d["headers"].get("apns-collapse-id", "")
                    token = d["token"]
                else:
                    incident = d["message"].get("android", {}).get("collapse_key", "")
                    token = d["message"].get("token") or d["token"] or ""
                out.append(Arrival(platform, incident, token, float(d["arrived_at"])))
    return out


@dataclass
class IncidentFigures:
    incident_id: str
    kind: str
    external_id: str
    pushes: int               # at the fakes
    apns: int
    fcm: int
    first_push_s: float       # after the 202
    last_push_s: float
    pushes_per_s: float       # first to last push
    matcher_s: float          # time in match_incident (geopush_match_seconds, summed)
    matcher_cpu_s: float      # CPU the matcher processes used, from the post to quiet

    @property
    def matcher_us_per_push(self) -> float:
        return round(self.matcher_cpu_s / self.pushes * 1e6, 1) if self.pushes else 0.0

    @classmethod
    def of(cls, posted: Posted, arrivals: list[Arrival], matcher_s: float,
           matcher_cpu_s: float) -> IncidentFigures:
        times = sorted(a.at for a in arrivals)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return cls(
            incident_id=posted.incident_id, kind=posted.kind, external_id=posted.external_id,
            pushes=len(arrivals), apns=sum(1 for a in arrivals if a.platform == "apns"),
            fcm=sum(1 for a in arrivals if a.platform == "fcm"),
            first_push_s=round(times[0] - posted.accepted_at, 3) if times else -1.0,
            last_push_s=round(times[-1] - posted.accepted_at, 3) if times else -1.0,
            pushes_per_s=round((len(times) - 1) / span, 1) if span else 0.0,
            matcher_s=round(matcher_s, 3), matcher_cpu_s=round(matcher_cpu_s, 3),
        )


def by_incident(arrivals: list[Arrival]) -> dict[str, list[Arrival]]:
    out: dict[str, list[Arrival]] = defaultdict(list)
    for a in arrivals:
        out[a.incident_id].append(a)
    return out


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


# -- the checks ---------------------------------------------------------------------------


@dataclass
class Checks:
    incidents: int = 0
    audience: int = 0          # devices to reach, over the incidents
    delivered: int = 0         # deliveries rows 'sent'
    fakes_checked: int = 0     # pushes compared one by one with the fakes
    duplicates: int = 0
    lost: int = 0
    held_by_limit: int = 0     # in an audience, not pushed: the device was at its limit
    over_limit: int = 0        # devices pushed more than the limit (limited categories)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 30:
            self.problems.append(text)


async def _audience(pool: asyncpg.Pool, redis: Any, incident_id: str,
                    near_me: positions.NearMePositions) -> tuple[str, set[str]]:
    """(category, the device ids) the matcher was to reach, as it finds them (read
    only), but with every near-me position within the widest radius looked at, so a
    position the bands' searches left out shows as a device not pushed."""
    row = await matching.incident(pool, incident_id)
    if row is None:
        return "", set()
    audience = await find_audience(pool, redis, Target(
        agency_id=row["agency_id"], category=row["category"], geometry=row["geom"],
        exact_lat=row["exact_lat"], exact_lon=row["exact_lon"], public_lat=row["lat"],
        public_lon=row["lon"], location_kind=row["location_kind"],
        responder_radius_m=row["responder_radius_m"]), near_me=near_me, forget=False)
    return str(row["category"]), {str(r["id"]) for r in audience.devices}


async def check(stack: Stack, posted: list[Posted], compared: list[Arrival],
                fakes_total: int, *, hourly_limit: int, location_ttl_s: float) -> Checks:
    """Nothing lost, no device twice, for every posted incident; the pushes in
    ``compared`` (those fetched from the fakes) one by one against ``deliveries``;
    ``fakes_total`` (the fakes' counters, less the ceiling's requests) against the
    table's total."""
    services = stack.services
    out = Checks(incidents=len(posted))
    ids = [p.incident_id for p in posted]
    pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=2)
    redis = async_redis_client(services.redis_url, services.is_cluster)
    try:
        sent = await _sent(pool, ids, out)
        if out.delivered != fakes_total:
            out.problem(f"{out.delivered} deliveries recorded 'sent', the fakes received "
                        f"{fakes_total}")
        near_me = positions.near_me(location_ttl_s).in_full()
        audiences = {i: await _audience(pool, redis, i, near_me) for i in ids}
        # Per device, its pushes of categories the hourly limit applies to.
        limited: Counter[str] = Counter()
        for incident_id in ids:
            if audiences[incident_id][0] not in MOST_SEVERE:
                limited.update(sent[incident_id].keys())
        if hourly_limit:
            out.over_limit = sum(1 for n in limited.values() if n > hourly_limit)
            if out.over_limit:
                out.problem(f"{out.over_limit} devices pushed more than {hourly_limit} times")
        for incident_id in ids:
            category, audience = audiences[incident_id]
            _compare(out, incident_id, sent[incident_id], audience,
                     hourly_limit if category not in MOST_SEVERE else 0, limited)
        await _against_fakes(pool, out, compared, sent)
    finally:
        await redis.aclose()
        await pool.close()
    return out


async def _sent(pool: asyncpg.Pool, ids: list[str], out: Checks
                ) -> dict[str, Counter[str]]:
    """Per incident, the devices recorded 'sent' (how many times each)."""
    rows = await pool.fetch(
        """SELECT incident_id::text AS incident, device_id::text AS device, outcome, kind
             FROM deliveries WHERE incident_id = ANY($1::uuid[])""", ids)
    sent: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        if r["outcome"] != "sent" or r["kind"] != "alert":
            out.problem(f"delivery {r['incident']}/{r['device']}: {r['outcome']} {r['kind']}")
            continue
        sent[r["incident"]][r["device"]] += 1
    out.delivered = sum(sum(c.values()) for c in sent.values())
    return sent


def _compare(out: Checks, incident_id: str, got: Counter[str], audience: set[str],
             limit: int, limited: Counter[str]) -> None:
    """One incident's deliveries against its audience; ``limit``: the hourly limit
    that applied to it (0: none)."""
    out.audience += len(audience)
    twice = sum(1 for n in got.values() if n > 1)
    out.duplicates += twice
    if twice:
        out.problem(f"{incident_id}: {twice} devices recorded twice")
    strangers = set(got) - audience
    if strangers:
        out.problem(f"{incident_id}: {len(strangers)} pushes to devices outside its audience")
    missing = audience - set(got)
    if limit:
        # Held back, not lost, when the device had its limit's worth by the end: the
        # count only grows within the hour, so it had them when this one was matched.
        held = {d for d in missing if limited[d] >= limit}
        out.held_by_limit += len(held)
        missing -= held
    out.lost += len(missing)
    if missing:
        out.problem(f"{incident_id}: {len(missing)} of {len(audience)} devices never pushed")


async def _against_fakes(pool: asyncpg.Pool, out: Checks, compared: list[Arrival],
                         sent: dict[str, Counter[str]]) -> None:
    """The fakes' own record, push by push, against the deliveries table."""
    tokens = sorted({a.token for a in compared})
    device_of = {r["token"]: str(r["id"]) for r in await pool.fetch(
        "SELECT token, id FROM devices WHERE token = ANY($1::text[])", tokens)}
    at_fakes: dict[str, Counter[str]] = defaultdict(Counter)
    for a in compared:
        at_fakes[a.incident_id][device_of.get(a.token, "?" + a.token)] += 1
    out.fakes_checked = len(compared)
    for incident_id, devices in at_fakes.items():
        twice = sum(1 for n in devices.values() if n > 1)
        if twice:
            out.duplicates += twice
            out.problem(f"{incident_id}: {twice} devices received it twice at the fakes")
        if set(devices) != set(sent.get(incident_id, {})):
            out.problem(f"{incident_id}: the fakes and deliveries disagree "
                        f"({len(devices)} and {len(sent.get(incident_id, {}))} devices)")


# -- the query, and PostGIS alone ---------------------------------------------------------


PAGE = 2000   # rows a cursor page, where the matcher reads one


@dataclass(frozen=True)
class QueryTiming:
    incident_id: str
    zones: int          # zones meeting the public geometry
    matched: int        # rows the match query returned
    bare_ms: float      # SELECT count(*) of zones meeting it
    match_ms: float     # the matcher's query (zones, near-me positions, categories)

    @property
    def ratio(self) -> float:
        return round(self.match_ms / self.bare_ms, 2) if self.bare_ms else 0.0


async def query_timings(stack: Stack, incident_ids: list[str], location_ttl_s: float,
                        repeat: int = 3) -> list[QueryTiming]:
    """Per incident, warm (one run first, then the median of ``repeat``): the bare
    PostGIS count of zones meeting its public geometry, and the matcher's query for it
    with the near-me positions the GEO search gives, read as the matcher reads it
    (``matching.neighbours`` at once, or ``matching.neighbour_pages`` where the code has
    the streaming matcher's cursor)."""
    services = stack.services
    pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=1)
    redis = async_redis_client(services.redis_url, services.is_cluster)
    near_me = positions.near_me(location_ttl_s)
    out: list[QueryTiming] = []
    try:
        for incident_id in incident_ids:
            row = await matching.incident(pool, incident_id)
            if row is None:
                continue
            public = await pool.fetchval(
                "SELECT public_geom::text FROM incidents WHERE id = $1", row["id"])
            point = (row["lat"], row["lon"])
            near = await near_positions(pool, redis, near_me, row["geom"], point, forget=False)

            async def bare(public: str = public) -> int:
                n: int = await pool.fetchval(
                    "SELECT count(*) FROM zones WHERE ST_Intersects(geom, $1::text::geometry)",
                    public)
                return n

            async def match(row: Any = row, point: tuple[float, float] = point,
                            near: list[positions.Nearby] = near) -> int:
                pages = getattr(matching, "neighbour_pages", None)
                if pages is None:   # the matcher reads the whole match at once
                    return len(await matching.neighbours(pool, row["geom"], row["category"],
                                                         point, near))
                # The streaming matcher reads it from a cursor, page by page.
                n = 0
                async for page in pages(pool, row["geom"], row["category"], point, near,
                                        first=PAGE, page=PAGE):
                    n += len(page)
                return n

            timings: dict[str, list[float]] = {"bare": [], "match": []}
            counts = {"bare": 0, "match": 0}
            for _ in range(repeat + 1):
                for name, fn in (("bare", bare), ("match", match)):
                    started = time.perf_counter()
                    counts[name] = await fn()
                    timings[name].append((time.perf_counter() - started) * 1000)
            out.append(QueryTiming(incident_id, counts["bare"], counts["match"],
                                   round(statistics.median(timings["bare"][1:]), 2),
                                   round(statistics.median(timings["match"][1:]), 2)))
    finally:
        await redis.aclose()
        await pool.close()
    return out
