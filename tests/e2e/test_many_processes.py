"""Many processes of each kind share the work, and losing some of them loses nothing.

Real processes, as an operator runs them: two ``geopush serve`` sharing one port
(GEOPUSH_HTTP_REUSE_PORT: the kernel spreads connections over them), three matchers,
two senders per platform and the outbox relay, on the suite's PostgreSQL and Redis,
against the fake APNs and FCM (in the test's loop, where the test can watch them).
20,000 devices (seeded by SQL) are in one incident's zones and 1,000 of them also in
one of 20 smaller incidents'. In the middle of the fan-out the matcher holding the
large incident and one sender of each platform get SIGKILL. At the end every device
has each of its pushes (a device pushed twice only ever under the same collapse id),
every accepted incident was matched, the deliveries table says so, and nothing is
left pending on any stream, retry schedule or outbox.

The short reclaim idle time (GEOPUSH_CLAIM_IDLE_MS=3000) is the test's: the default
(60 s) suits production, where a batch may take longer than three seconds. The
senders keep 100 sends in flight (not 500) against fakes that answer after 250 ms,
so a platform's fan-out lasts seconds and the test's loop (which runs both fakes)
watches it as it happens.
This test takes 40-50 s on two shared cores (starting ten processes, and delivering
21,000 pushes at the pace above, a sender of each platform short for most of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from server.dev.devenv import free_port
from server.domain.signing import HEADER, sign
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import POINT, SEATTLE_CALL_TYPES, incident

REPO = Path(__file__).resolve().parents[2]
DEVICES = 20_000
GROUPS, GROUP_SIZE = 20, 50
CLAIM_IDLE_MS = 3_000
# What senders run with here: 400 pushes/s each against the fakes' 250 ms.
SENDER_ENV = {"GEOPUSH_SEND_CONCURRENCY": "100", "GEOPUSH_STREAM_BATCH": "50"}
AGENCY = "many-processes"
# Where the small incidents are: 2.2 km apart eastwards, each well clear of the
# others' and the large incident's 300 m zones.
GROUP_POINTS = [(POINT[0], POINT[1] + 0.03 * (g + 1)) for g in range(GROUPS)]


@dataclass
class Proc:
    name: str
    kind: str
    process: asyncio.subprocess.Process
    log: Path
    metrics_port: int

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"--- {self.name} ---\n{text[-3000:]}"


@dataclass
class Fleet:
    web_port: int
    procs: list[Proc] = field(default_factory=list)

    def of(self, kind: str) -> list[Proc]:
        return [p for p in self.procs if p.kind == kind]

    def named(self, name: str) -> Proc:
        [proc] = [p for p in self.procs if p.name == name]
        return proc

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs)


def environment(stack: Stack, name: str, metrics_port: int, web_port: int) -> dict[str, str]:
    """A process's environment: the test's services and fakes, and nothing the
    developer's shell may have set."""
    apns, fcm = stack.settings.apns, stack.settings.fcm
    assert apns is not None and apns.ca_file is not None and fcm is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOPUSH_")}
    env.update({
        "GEOPUSH_DATABASE_URL": stack.settings.database_url,
        "GEOPUSH_REDIS_URL": stack.settings.redis_url,
        "GEOPUSH_ADMIN_TOKEN": ADMIN_TOKEN,
        "GEOPUSH_HTTP_PORT": str(web_port),
        "GEOPUSH_HTTP_REUSE_PORT": "1",
        "GEOPUSH_METRICS_PORT": str(metrics_port),
        "GEOPUSH_CONSUMER_NAME": name,
        "GEOPUSH_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
        "GEOPUSH_APNS_KEY_FILE": str(apns.key_file),
        "GEOPUSH_APNS_KEY_ID": apns.key_id,
        "GEOPUSH_APNS_TEAM_ID": apns.team_id,
        "GEOPUSH_APNS_TOPIC": apns.topic,
        "GEOPUSH_APNS_HOST": "127.0.0.1",
        "GEOPUSH_APNS_PORT": str(apns.port),
        "GEOPUSH_APNS_CA_FILE": str(apns.ca_file),
        "GEOPUSH_APNS_TIMEOUT": "5",
        "GEOPUSH_FCM_SERVICE_ACCOUNT_FILE": str(fcm.service_account_file),
        "GEOPUSH_FCM_PROJECT": fcm.project_id or "",
        "GEOPUSH_FCM_ENDPOINT": fcm.endpoint,
        "GEOPUSH_FCM_TIMEOUT": "5",
        "GEOPUSH_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    return env


FLEET = [("web-1", "web"), ("web-2", "web"),
         ("matcher-1", "matcher"), ("matcher-2", "matcher"), ("matcher-3", "matcher"),
         ("apns-1", "apns"), ("apns-2", "apns"), ("fcm-1", "fcm"), ("fcm-2", "fcm"),
         ("relay-1", "relay")]


@contextlib.asynccontextmanager
async def fleet(stack: Stack, log_dir: Path) -> AsyncIterator[Fleet]:
    """Every process of FLEET, started as ``geopush serve`` / ``geopush worker KIND``;
    killed on the way out if still running."""
    running = Fleet(web_port=free_port())
    try:
        for name, kind in FLEET:
            port = 0   # each picks a free one and logs it (free_port() could race)
            args = ["serve"] if kind == "web" else ["worker", kind]
            log = log_dir / f"{name}.log"
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "server.cli", *args, cwd=REPO,
                    env={**environment(stack, name, port, running.web_port),
                         **(SENDER_ENV if kind in ("apns", "fcm") else {})},
                    stdout=out, stderr=asyncio.subprocess.STDOUT)
            running.procs.append(Proc(name, kind, process, log, port))
        # Up: each serves its own /metrics once its resources are ready (the web
        # processes too, GEOPUSH_METRICS_PORT: their shared port can't say which
        # answered).
        async with aiohttp.ClientSession() as http:
            for proc in running.procs:
                await wait_for(_answers(http, proc), within=90,
                               what=f"{proc.name} to start")
            await wait_for(lambda: _ready(http, running.web_port), within=30,
                           what="the shared port's /readyz")
        yield running
    finally:
        for proc in running.procs:
            if proc.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.process.kill()
            await proc.process.wait()


_METRICS_LOG = re.compile(r"metrics on http://[^:]+:(\d+)/metrics")


def _answers(http: aiohttp.ClientSession, proc: Proc) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        assert proc.process.returncode is None, f"{proc.name} exited\n{proc.tail()}"
        if not proc.metrics_port:
            found = _METRICS_LOG.search(proc.log.read_text(errors="replace"))
            if found is None:
                return False
            proc.metrics_port = int(found[1])
        try:
            async with http.get(f"http://127.0.0.1:{proc.metrics_port}/metrics") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False
    return check


async def _ready(http: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def seed(pool: asyncpg.Pool) -> dict[str, set[str]]:
    """20,000 devices (half APNs, half FCM, tokens of each platform's shape), every one
    with a 300 m zone around POINT, the first 1,000 (by token) in groups of 50 with a
    second zone around their group's point. Each device's token: the external ids of
    the incidents it must get."""
    await pool.execute(
        """INSERT INTO devices (platform, token, secret_hash)
           SELECT CASE WHEN g % 2 = 0 THEN 'apns' ELSE 'fcm' END,
                  CASE WHEN g % 2 = 0
                       THEN encode(sha256(convert_to('many-' || g, 'UTF8')), 'hex')
                       ELSE 'inst' || g || ':APA91b' || md5('many-' || g) END,
                  '\\x00'
             FROM generate_series(1, $1::int) g""", DEVICES)
    await pool.execute(
        """INSERT INTO zones (device_id, name, geom)
           SELECT id, 'home', ST_Multi(ST_Buffer(
                  ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, 300)::geometry)
             FROM devices""", POINT[1], POINT[0])
    await pool.execute(
        """WITH numbered AS (SELECT id, (row_number() OVER (ORDER BY token) - 1)::int AS n
                               FROM devices),
                grouped AS (SELECT id, n / $2 AS g FROM numbered WHERE n < $1 * $2)
           INSERT INTO zones (device_id, name, geom)
           SELECT id, 'group-' || g, ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(
                  $4::float8 + 0.03 * (g + 1), $3::float8), 4326)::geography, 300)::geometry)
             FROM grouped""", GROUPS, GROUP_SIZE, POINT[0], POINT[1])
    await pool.execute("ANALYZE devices; ANALYZE zones")
    expected: dict[str, set[str]] = defaultdict(set)
    for row in await pool.fetch(
            "SELECT d.token, z.name FROM zones z JOIN devices d ON d.id = z.device_id"):
        expected[row["token"]].add("BIG" if row["name"] == "home" else row["name"])
    return expected


async def post(http: aiohttp.ClientSession, port: int, secret: str, doc: dict[str, Any]
               ) -> tuple[int, dict[str, Any]]:
    """A signed webhook to the shared port, on a connection of its own."""
    body = json.dumps(doc).encode()
    headers = {HEADER: sign(secret, body, int(time.time())),
               "Content-Type": "application/json"}
    async with http.post(f"http://127.0.0.1:{port}/v1/agencies/{AGENCY}/incidents",
                         data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def pending_by_consumer(redis: aioredis.Redis) -> dict[str, int]:
    """Entries read and not acknowledged, per consumer, over every stream and group
    (whatever streams the push shards and the matcher's work use)."""
    pending: dict[str, int] = defaultdict(int)
    async for stream in redis.scan_iter(match="geopush:*", count=10_000, _type="STREAM"):
        for group in await redis.xinfo_groups(stream):
            for consumer in await redis.xinfo_consumers(stream, group["name"]):
                pending[consumer["name"]] += int(consumer["pending"])
    return pending


async def nothing_pending(redis: aioredis.Redis) -> bool:
    """XPENDING empty and nothing unread on every stream; no retry scheduled."""
    async for stream in redis.scan_iter(match="geopush:*", count=10_000, _type="STREAM"):
        for group in await redis.xinfo_groups(stream):
            if group["pending"] or group.get("lag"):
                return False
    async for schedule in redis.scan_iter(match="geopush:*retry*", count=10_000,
                                         _type="ZSET"):
        if await redis.zcard(schedule):
            return False
    return True


def delivered(stack: Stack, by_id: dict[str, str]) -> dict[str, list[str]]:
    """Each token's pushes at both fakes, as the external ids of their collapse ids."""
    out: dict[str, list[str]] = defaultdict(list)
    for a in stack.apns.deliveries:
        out[a.token].append(by_id.get(a.headers.get("apns-collapse-id", ""), "?"))
    for f in stack.fcm.deliveries:
        collapse = f.message.get("android", {}).get("collapse_key", "")
        out[f.token or ""].append(by_id.get(collapse, "?"))
    return out


async def kill_holding_work(proc: Proc, redis: aioredis.Redis) -> int:
    """SIGKILL ``proc`` at a moment it holds work (stream entries read and not
    acknowledged): it is frozen (SIGSTOP) first, so what Redis says it holds can't
    change before the kill; let go again (SIGCONT) while it holds nothing. The number
    of entries it held, or 0 when it held none (then it runs on)."""
    pid = proc.process.pid
    proc.process.send_signal(signal.SIGSTOP)
    await wait_for(lambda: _stopped(pid), within=10, what=f"{proc.name} to stop")
    held = (await pending_by_consumer(redis))[proc.name]
    if not held:
        proc.process.send_signal(signal.SIGCONT)
        return 0
    proc.process.send_signal(signal.SIGKILL)
    assert await proc.process.wait() == -signal.SIGKILL
    return held


def _stopped(pid: int) -> bool:
    """The process is stopped (state T in /proc/PID/stat, after the command's name)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


async def kill_when_holding(find: Callable[[], Awaitable[str | None]], fleet: Fleet,
                            redis: aioredis.Redis, *, what: str,
                            progress: Callable[[], Awaitable[str]] | None = None,
                            ) -> tuple[Proc, int]:
    """The first process ``find`` names that holds work when frozen, SIGKILLed; and
    what it held."""
    deadline = time.monotonic() + 120
    while True:
        name = await _first(find, within=max(1.0, deadline - time.monotonic()), what=what,
                            fleet=fleet, progress=progress)
        held = await kill_holding_work(fleet.named(name), redis)
        if held:
            return fleet.named(name), held


@pytest.mark.slow
@pytest.mark.workers()
async def test_two_webs_three_matchers_two_senders_each_lose_nothing_to_sigkill(
    stack: Stack, tmp_path: Path
) -> None:
    expected = await seed(stack.pool)
    assert len(expected) == DEVICES
    # Every send waits at the fakes as on a long round trip, so a sender always has
    # hundreds in flight (read, not yet acknowledged) when it is killed, and a
    # platform's fan-out lasts long enough to be caught in the middle.
    stack.apns.set_faults(rate=1, status=200, latency_ms=250)
    stack.fcm.set_faults(rate=0, latency_ms=250)

    async with fleet(stack, tmp_path) as running, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)) as http:
        port = running.web_port
        async with http.post(f"http://127.0.0.1:{port}/v1/admin/agencies", json={
                "id": AGENCY, "name": "Many Processes FD", "timezone": "America/Los_Angeles",
                "call_types": SEATTLE_CALL_TYPES},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 201, await resp.text()
            secret = (await resp.json())["secret"]

        # Watching from the start (the fan-out is quick once under way): the matcher
        # that takes the large incident dies while it holds it (or a part of it), and
        # one sender of each platform with pushes in flight, once 2,000 are through.
        matchers = {p.name for p in running.of("matcher")}
        matcher_killed = asyncio.create_task(kill_when_holding(
            _holder(stack.redis, matchers), running, stack.redis,
            what="a matcher with work of the large incident"))
        senders_killed = asyncio.create_task(kill_a_sender_of_each_platform(stack, running))
        try:
            by_id: dict[str, str] = {}
            docs = [incident("BIG")] + [incident(f"group-{g}", lat=lat, lon=lon)
                                        for g, (lat, lon) in enumerate(GROUP_POINTS)]
            status, accepted = await post(http, port, secret, docs[0])
            assert (status, accepted["decision"]) == (202, "alert"), accepted
            by_id[accepted["incident_id"]] = "BIG"
            await matcher_killed

            # The small incidents go to the two matchers left, through both web
            # processes (each its own connection, spread by the kernel over the port).
            for doc in docs[1:]:
                status, accepted = await post(http, port, secret, doc)
                assert (status, accepted["decision"]) == (202, "alert"), accepted
                by_id[accepted["incident_id"]] = doc["id"]
            await _both_web_processes_served(http, running, secret, docs[1])
            in_flight_at_kill = await senders_killed
        finally:
            for task in (matcher_killed, senders_killed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

        # The survivors reclaim what the dead left and finish.
        def complete() -> bool:
            got = delivered(stack, by_id)
            return all(set(got.get(token, ())) >= want for token, want in expected.items())

        try:
            await wait_for(complete, within=240, what="every device's pushes")
            await wait_for(lambda: nothing_pending(stack.redis), within=60,
                           what="every stream acknowledged")
        except AssertionError as exc:
            got = delivered(stack, by_id)
            missing = sum(len(want - set(got.get(t, ()))) for t, want in expected.items())
            raise AssertionError(f"{exc}\n{missing} pushes missing; {await progress(stack)}"
                                 f"\n{running.logs()}") from None

        # Each device got exactly its incidents; twice only under one collapse id.
        got = delivered(stack, by_id)
        assert set(got) == set(expected)
        assert all(set(ids) == expected[token] for token, ids in got.items())
        # Sent again: what the killed senders held (read, not acknowledged), once more.
        assert all(ids.count(i) <= 2 for ids in got.values() for i in ids)
        assert in_flight_at_kill > 0

        # Every accepted incident was matched and its deliveries recorded.
        rows = await stack.pool.fetch(
            """SELECT i.external_id, d.outcome, count(DISTINCT d.device_id) AS devices
                 FROM deliveries d JOIN incidents i ON i.id = d.incident_id
                GROUP BY 1, 2""")
        recorded = {(r["external_id"], r["outcome"]): r["devices"] for r in rows}
        assert recorded == {("BIG", "sent"): DEVICES,
                            **{(f"group-{g}", "sent"): GROUP_SIZE for g in range(GROUPS)}}
        await wait_for(lambda: _outbox_empty(stack.pool), within=30,
                       what="the outbox to empty")

        # The survivors stop cleanly.
        survivors = [p for p in running.procs if p.process.returncode is None]
        assert len(survivors) == len(FLEET) - 3
        for proc in survivors:
            proc.process.send_signal(signal.SIGTERM)
        for proc in survivors:
            code = await asyncio.wait_for(proc.process.wait(), timeout=30)
            assert code == 0, proc.tail()


async def progress(stack: Stack) -> str:
    outcomes = await stack.pool.fetch(
        "SELECT outcome, count(*) AS n FROM deliveries GROUP BY outcome")
    return (f"APNs fake: {len(stack.apns.deliveries)} deliveries, {dict(stack.apns.stats)}; "
            f"FCM fake: {len(stack.fcm.deliveries)} deliveries, {stack.fcm.stats()}; "
            f"pending {dict(await pending_by_consumer(stack.redis))}; "
            f"recorded {[tuple(r) for r in outcomes]}")


async def _first(find: Callable[[], Awaitable[str | None]], *, within: float, what: str,
                 fleet: Fleet, progress: Callable[[], Awaitable[str]] | None = None) -> str:
    """Polls ``find`` until it names something."""
    deadline = time.monotonic() + within
    while True:
        found = await find()
        if found:
            return str(found)
        if time.monotonic() > deadline:
            state = await progress() if progress else ""
            raise AssertionError(f"timed out waiting for {what}\n{state}\n{fleet.logs()}")
        await asyncio.sleep(0.01)


def _holder(redis: aioredis.Redis, matchers: set[str]) -> Callable[[], Awaitable[str | None]]:
    """A matcher holding work (read, not acknowledged)."""
    async def find() -> str | None:
        pending = await pending_by_consumer(redis)
        return next((name for name in sorted(matchers) if pending.get(name)), None)
    return find


async def kill_a_sender_of_each_platform(stack: Stack, running: Fleet) -> int:
    """One sender of each platform SIGKILLed with pushes in flight, whichever
    platform's fan-out is under way first; the pushes they held."""
    held_at_kill = 0
    busy = {platform: _busy_sender(stack.redis, {p.name for p in running.of(platform)},
                                   at_fake)
            for platform, at_fake in (("apns", stack.apns.deliveries),
                                      ("fcm", stack.fcm.deliveries))}
    while busy:
        victim, held = await kill_when_holding(
            _any_of(busy), running, stack.redis,
            what=f"a sender busy mid fan-out ({', '.join(busy)})",
            progress=lambda: progress(stack))
        del busy[victim.kind]
        held_at_kill += held
    return held_at_kill


def _any_of(finders: dict[str, Callable[[], Awaitable[str | None]]]
            ) -> Callable[[], Awaitable[str | None]]:
    async def find() -> str | None:
        for finder in finders.values():
            found = await finder()
            if found:
                return found
        return None
    return find


def _busy_sender(redis: aioredis.Redis, senders: set[str], at_fake: list[Any]
                 ) -> Callable[[], Awaitable[str | None]]:
    """The sender with most in flight, once its platform's fan-out is well under way
    (2,000 pushes at its fake: the small incidents' 500 and some of the large one's)."""
    async def find() -> str | None:
        if len(at_fake) < 2_000:
            return None
        pending = await pending_by_consumer(redis)
        busy = sorted((pending.get(name, 0), name) for name in senders)
        return busy[-1][1] if busy[-1][0] else None
    return find


async def _both_web_processes_served(http: aiohttp.ClientSession, running: Fleet,
                                     secret: str, again: dict[str, Any]) -> None:
    """Both web processes answered webhooks on the shared port (each logs every
    incident). The kernel hashes each new connection to one of them; should the 21
    webhooks all have landed on one, repeats of an incident (answered as duplicates,
    nothing new to match) go on until the other has answered one too."""
    for attempt in range(200):
        served = [p.log.read_text(errors="replace").count(" external_id=")
                  for p in running.of("web")]
        if all(served):
            return
        status, accepted = await post(http, running.web_port, secret, again)
        assert status == 202 and accepted["duplicate"], (attempt, accepted)
    raise AssertionError(f"one web process took every connection\n{running.logs()}")


async def _outbox_empty(pool: asyncpg.Pool) -> bool:
    left: int = await pool.fetchval("SELECT count(*) FROM outbox")
    return left == 0
