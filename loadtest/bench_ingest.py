"""Ingest benchmark: signed native-JSON webhooks per second through one web process.

    python -m loadtest.bench_ingest [--duration 20] [--connections 32] [--requests N]
                                    [--threads 1] [--json PATH] [--keep-services]
                                    [--py-spy PATH]

Needs (Debian packages): ``wrk`` (the load generator), ``postgresql`` + ``postgis`` and
``redis-server`` (unless GEOPUSH_DATABASE_URL and GEOPUSH_REDIS_URL are set); py-spy in
the venv only for ``--py-spy``. It exits with the apt-get line to run when one is missing.

What it does, in one run:

1. Starts a private PostgreSQL+PostGIS and Redis under ``.geopush/bench/`` (a fresh
   database each run) unless GEOPUSH_DATABASE_URL / GEOPUSH_REDIS_URL are set; migrates;
   creates the agency ``bench-seattle`` with Seattle Fire's call-type map and a few
   thousand devices with zones around Seattle (the matching side is not empty).
2. Starts ONE ``geopush serve`` (env GEOPUSH_*) and ONE hello-world aiohttp process with
   the same uvloop/access-log settings: the framework's ceiling.
3. Pre-generates unique, correctly signed webhooks as raw HTTP requests (the load
   generator does no crypto), warms both servers up, then drives each for ``--duration``
   seconds with ``wrk`` at the same concurrency, replaying the same kind of bytes.
4. Verifies that every 202 names a stored incident (and none was a duplicate), that
   nothing but 202 was answered, and that no request body was sent twice.
5. Prints webhooks/s, p50, p99 next to the ceiling's, the ratio, the status histogram
   and where the CPU went; ``--json PATH`` writes the same.

Figures on a shared machine are noisy: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench_common import (
    REPO,
    BenchError,
    CpuMeter,
    Services,
    WrkResult,
    raw_post,
    require_tools,
    run_wrk,
    serve_hello,
    start_services,
    stop_process,
    wait_http,
    write_requests,
)
from loadtest.incidents import random_incident
from server.dev.devenv import free_port
from server.domain.signing import HEADER, sign

AGENCY = "bench-seattle"
PATH = f"/v1/agencies/{AGENCY}/incidents"
DEVICES = 3000
RATE_LIMIT_PER_MINUTE = 1_000_000
SIGNATURE_WINDOW_S = 300
WARMUP_CEILING_S = 3
WARMUP_INGEST_S = 5
WARMUP_REQUESTS = 20_000


# -- services -------------------------------------------------------------------------


_SEED_DEVICES = """
INSERT INTO devices (platform, token, timezone, secret_hash, categories)
SELECT CASE WHEN g % 2 = 0 THEN 'apns' ELSE 'fcm' END,
       'bench-' || md5(g::text || $2), 'America/Los_Angeles', '\\x00'::bytea,
       CASE WHEN g % 5 = 0 THEN ARRAY['structure_fire', 'shooting'] END
  FROM generate_series(1, $1) AS g
"""
# One or two circles (300 m to 2 km) per device, inside the Seattle box.
_SEED_ZONES = """
INSERT INTO zones (device_id, name, geom)
SELECT d.id, 'zone ' || z,
       ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(-122.44 + random() * 0.20,
                                                  47.50 + random() * 0.23), 4326)::geography,
                          300 + random() * 1700, 'quad_segs=8')::geometry)
  FROM devices d CROSS JOIN generate_series(1, 2) AS z
 WHERE d.token LIKE 'bench-%' AND (z = 1 OR random() < 0.3)
"""


async def prepare_database(database_url: str) -> str:
    """Migrate, create (or re-key) the bench agency, seed devices; returns its secret."""
    from server.agencies import create_agency_with_secret
    from server.domain import signing
    from server.store.agencies import rotate_secret, update_agency
    from server.store.db import create_pool
    from server.store.migrate import migrate

    await migrate(database_url)
    call_types = json.loads((REPO / "examples/call-types/seattle-fire.json").read_text())
    try:
        secret = await create_agency_with_secret(
            database_url, agency_id=AGENCY, name="Seattle Fire (benchmark)",
            timezone="America/Los_Angeles", call_types=call_types,
        )
    except ValueError:  # exists (a shared database): give it a secret we know
        secret = signing.new_secret()
        pool = await create_pool(database_url, min_size=1, max_size=1)
        try:
            await rotate_secret(pool, AGENCY, secret)
        finally:
            await pool.close()
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        # The benchmark measures capacity, not the per-agency limit (1,200/min by
        # default): raise it to the most the admin API allows. The limiter still runs.
        await update_agency(pool, AGENCY, {"rate_limit_per_minute": RATE_LIMIT_PER_MINUTE})
        have = await pool.fetchval("SELECT count(*) FROM devices WHERE token LIKE 'bench-%'")
        if have < DEVICES:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT setseed(0.42)")
                await conn.execute(_SEED_DEVICES, DEVICES - have, secrets.token_hex(4))
                await conn.execute(_SEED_ZONES)
            await pool.execute("ANALYZE devices; ANALYZE zones")
    finally:
        await pool.close()
    return secret


async def stored_incidents(database_url: str, incident_ids: list[str], prefix: str
                           ) -> tuple[int, int]:
    """(incidents among ``incident_ids``, incidents whose external id has ``prefix``)."""
    from server.store.db import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        found = await pool.fetchval(
            "SELECT count(*) FROM incidents WHERE id = ANY($1::uuid[])", incident_ids)
        by_prefix = await pool.fetchval(
            "SELECT count(*) FROM incidents WHERE agency_id = $1 AND external_id LIKE $2",
            AGENCY, prefix + "%")
    finally:
        await pool.close()
    return int(found), int(by_prefix)


# -- webhooks -------------------------------------------------------------------------


def webhooks(secret: str, host: str, prefix: str, count: int, seed: int) -> Iterator[bytes]:
    """``count`` unique, signed native-JSON webhooks as raw HTTP/1.1 requests.

    Shaped like a CAD's (the caller and narrative included: the parser drops them);
    all signed now, so they stay valid for the 300 s signature window.
    """
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    stamp = int(now.timestamp())
    for n in range(count):
        doc = {
            **random_incident(rng, f"{prefix}{n:08d}", now),
            "narrative": "caller reports smoke from 2nd floor, elderly resident inside",
            "caller": {"name": "John Q Caller", "phone": "+1 206 555 0147"},
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", HEADER: sign(secret, body, stamp)}
        yield raw_post(host, PATH, headers, body)


# -- results --------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    statuses: dict[int, int]
    socket_errors: int
    cpu_cores: dict[str, float]   # CPU seconds per wall second, per process group
    machine_busy: float           # fraction of all cores busy (anything on the machine)

    @classmethod
    def of(cls, name: str, r: WrkResult, meter: CpuMeter) -> Phase:
        cores = {k: round(v / r.seconds, 2) for k, v in meter.used.items()}
        cores["wrk"] = round(r.client_cpu_s / r.seconds, 2)
        return cls(name, round(r.rate, 1), r.latency_ms["50"], r.latency_ms["90"],
                   r.latency_ms["99"], r.latency_ms["max"], r.requests, r.statuses,
                   r.socket_errors, cores, round(meter.machine_busy_fraction, 2))


@dataclass
class Report:
    command: str
    started_at: str
    machine: str
    connections: int
    threads: int
    duration_s: float
    ingest: Phase
    ceiling: Phase
    ratio_rate: float
    ratio_p99: float
    verification: dict[str, Any]
    ok: bool
    problems: list[str] = field(default_factory=list)


def machine_summary() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()} CPU ({cpu}), {mem_kb / 1024 / 1024:.0f} GiB, "
            f"Python {sys.version.split()[0]}, load {load:.2f} at start")


def print_report(rep: Report) -> None:
    i, c = rep.ingest, rep.ceiling
    print(f"\n{rep.machine}\n{rep.connections} connections, {rep.threads} wrk thread(s), "
          f"{rep.duration_s:.0f} s per phase\n")
    print(f"{'':24}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for ph in (i, c):
        label = "ingest (geopush serve)" if ph is i else "ceiling (hello world)"
        print(f"{label:24}{ph.rate:>10.0f}{ph.p50_ms:>9.1f}{ph.p90_ms:>9.1f}"
              f"{ph.p99_ms:>9.1f}{ph.max_ms:>9.1f}")
    print(f"\nratio ingest/ceiling: throughput {rep.ratio_rate:.3f}, "
          f"p99 {rep.ratio_p99:.1f}x the ceiling's")
    for ph in (i, c):
        hist = ", ".join(f"{k}: {v}" for k, v in sorted(ph.statuses.items()))
        cores = ", ".join(f"{k} {v:.2f}" for k, v in ph.cpu_cores.items())
        print(f"{ph.name:8} statuses {{{hist}}}, socket errors {ph.socket_errors}; "
              f"CPU cores used: {cores}; machine busy {ph.machine_busy:.0%}")
    v = rep.verification
    print(f"verified: {v['accepted']} accepted, {v['stored']} of them stored, "
          f"{v['duplicates']} duplicates, {v['sent']} sent, {v['rows_for_run']} rows for "
          f"the run, {v['wraps']} reused bodies")
    target = i.rate >= 1000 and i.p99_ms < 50
    print(f"target (>= 1000/s, p99 < 50 ms): {'met' if target else 'NOT met'}")
    for p in rep.problems:
        print(f"PROBLEM: {p}")


# -- the run --------------------------------------------------------------------------


@dataclass
class Servers:
    web: subprocess.Popen[bytes]
    hello: subprocess.Popen[bytes]
    web_port: int
    hello_port: int


def start_servers(services: Services, workdir: Path, web_cmd_override: str | None = None
                  ) -> Servers:
    web_port, hello_port = free_port(), free_port()
    env = {**os.environ, "GEOPUSH_DATABASE_URL": services.database_url,
           "GEOPUSH_REDIS_URL": services.redis_url, "GEOPUSH_HTTP_HOST": "127.0.0.1",
           "GEOPUSH_HTTP_PORT": str(web_port), "GEOPUSH_ADMIN_TOKEN": secrets.token_hex(16),
           "GEOPUSH_LOG_LEVEL": os.environ.get("GEOPUSH_LOG_LEVEL", "INFO")}
    geopush = Path(sys.executable).parent / "geopush"
    web_cmd = [str(geopush), "serve"] if geopush.exists() else [
        sys.executable, "-m", "server.cli", "serve"]
    if web_cmd_override:
        web_cmd = shlex.split(web_cmd_override)
    with (workdir / "web.log").open("wb") as web_log, \
         (workdir / "hello.log").open("wb") as hello_log:
        web = subprocess.Popen(web_cmd, env=env, cwd=REPO, stdout=web_log,
                               stderr=subprocess.STDOUT)
        hello = subprocess.Popen(
            [sys.executable, "-m", "loadtest.bench_ingest", "--serve-hello", str(hello_port)],
            cwd=REPO, stdout=hello_log, stderr=subprocess.STDOUT)
    servers = Servers(web, hello, web_port, hello_port)
    try:
        wait_http(f"http://127.0.0.1:{web_port}/healthz", proc=web)
        wait_http(f"http://127.0.0.1:{hello_port}/healthz", proc=hello)
    except BenchError:
        stop_servers(servers)
        raise
    return servers


def stop_servers(s: Servers) -> None:
    stop_process(s.web)
    stop_process(s.hello)


def start_py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        sys.exit(f"bench: --py-spy needs py-spy: {sys.executable} -m pip install py-spy")
    fmt = {".json": "speedscope", ".txt": "raw"}.get(out.suffix, "flamegraph")
    return subprocess.Popen(
        [str(py_spy), "record", "--nonblocking", "--rate", "200", "-p", str(pid),
         "-d", str(max(1, round(seconds))), "-f", fmt, "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(args: argparse.Namespace, services: Services, workdir: Path) -> Report:
    started = dt.datetime.now(dt.UTC)
    secret = asyncio.run(prepare_database(services.database_url))
    servers = start_servers(services, workdir, args.web_cmd)
    run_id = secrets.token_hex(3)
    groups = {"web": servers.web.pid, "hello": servers.hello.pid}
    pg_pid = services.pids().get("postgres")
    if pg_pid is not None:
        groups["postgres"] = pg_pid
    if services.redis is not None and services.redis.process is not None:
        groups["redis"] = services.redis.process.pid
    try:
        def wrk(port: int, prefix: Path, seconds: float, collect: bool = False) -> WrkResult:
            return run_wrk(f"http://127.0.0.1:{port}/", prefix, duration=seconds,
                           connections=args.connections, threads=args.threads,
                           result_path=workdir / "wrk-result.json", collect=collect)

        def generate(name: str, count: int, ext_prefix: str) -> Path:
            prefix = workdir / f"requests-{name}"
            host = f"127.0.0.1:{servers.web_port}"
            write_requests(prefix, webhooks(secret, host, ext_prefix, count, seed=len(name)),
                           args.threads)
            return prefix

        warm = generate("warmup", WARMUP_REQUESTS, f"BW-{run_id}-")
        print(f"warming up: ceiling {WARMUP_CEILING_S} s, ingest {WARMUP_INGEST_S} s",
              file=sys.stderr)
        wrk(servers.hello_port, warm, WARMUP_CEILING_S)
        warm_rate = wrk(servers.web_port, warm, WARMUP_INGEST_S).rate
        count = args.requests or int(max(warm_rate, 500) * args.duration * 2) + 5000
        ext_prefix = f"B-{run_id}-"
        t0 = time.monotonic()
        bodies = generate("measure", count, ext_prefix)
        print(f"{count} webhooks signed in {time.monotonic() - t0:.1f} s; measuring ingest "
              f"then ceiling, {args.duration:.0f} s each", file=sys.stderr)

        spy = start_py_spy(servers.web.pid, args.py_spy, args.duration) if args.py_spy else None
        meter = CpuMeter(groups)
        meter.start()
        ingest = wrk(servers.web_port, bodies, args.duration, collect=True)
        meter.stop()
        if spy is not None:
            spy.wait()
        ingest_phase = Phase.of("ingest", ingest, meter)

        meter = CpuMeter(groups)
        meter.start()
        ceiling = wrk(servers.hello_port, bodies, args.duration)
        meter.stop()
        ceiling_phase = Phase.of("ceiling", ceiling, meter)
    finally:
        stop_servers(servers)
    stored, rows = asyncio.run(stored_incidents(services.database_url, ingest.incident_ids,
                                                ext_prefix))
    accepted = ingest.statuses.get(202, 0)
    verification = {"accepted": accepted, "ids_in_replies": len(ingest.incident_ids),
                    "stored": stored, "duplicates": ingest.duplicates, "sent": ingest.sent,
                    "rows_for_run": rows, "wraps": ingest.wraps}
    problems = []
    non_202 = {k: v for k, v in ingest.statuses.items() if k != 202}
    if non_202 or ingest.socket_errors:
        problems.append(f"ingest answered other than 202: {non_202}, "
                        f"socket errors {ingest.errors}")
    if stored != accepted or len(ingest.incident_ids) != accepted:
        problems.append(f"{accepted} answered 202 but {stored} of their incidents are stored")
    if ingest.duplicates:
        problems.append(f"{ingest.duplicates} answers said duplicate")
    if ingest.wraps:
        problems.append("ran out of pre-generated webhooks (bodies reused); raise --requests")
    # Requests in flight when wrk stopped may have been stored without being counted.
    if not accepted <= rows <= ingest.sent:
        problems.append(f"{rows} rows for {accepted} accepted and {ingest.sent} sent")
    if ceiling.statuses.keys() - {202} or ceiling.socket_errors:
        problems.append(f"ceiling answered {ceiling.statuses}, errors {ceiling.errors}")
    return Report(
        command=" ".join(["python -m loadtest.bench_ingest", *sys.argv[1:]]),
        started_at=started.isoformat(timespec="seconds"),
        machine=machine_summary(), connections=args.connections, threads=args.threads,
        duration_s=args.duration, ingest=ingest_phase, ceiling=ceiling_phase,
        ratio_rate=round(ingest.rate / ceiling.rate, 3) if ceiling.rate else 0.0,
        ratio_p99=round(ingest_phase.p99_ms / ceiling_phase.p99_ms, 1)
        if ceiling_phase.p99_ms else 0.0,
        verification=verification, ok=not problems, problems=problems,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_ingest",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=20, help="seconds per measured phase")
    p.add_argument("--connections", type=int, default=32, help="concurrent connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (the client shares "
                   "the machine: 1 is right on 2 cores)")
    p.add_argument("--requests", type=int, default=0,
                   help="unique webhooks to pre-generate for the measured phase "
                        "(default: twice what the warm-up rate needs)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep-services", action="store_true",
                   help="leave the private PostgreSQL and Redis running (prints their URLs)")
    p.add_argument("--py-spy", type=Path, metavar="PATH",
                   help="profile the web process during the ingest phase (.svg flamegraph, "
                        ".json speedscope, .txt collapsed stacks); that run's figures are "
                        "not representative")
    p.add_argument("--web-cmd", metavar="CMD",
                   help="run this instead of `geopush serve` (A/B experiments; it gets the "
                        "same GEOPUSH_* environment)")
    p.add_argument("--serve-hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_hello is None and not 1 <= args.duration <= SIGNATURE_WINDOW_S - 60:
        p.error(f"--duration must be between 1 and {SIGNATURE_WINDOW_S - 60} s: every "
                "webhook is signed before the ingest phase and must stay within the "
                f"{SIGNATURE_WINDOW_S} s signature window")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve_hello is not None:
        serve_hello("127.0.0.1", args.serve_hello)
        return
    require_tools(["wrk"])
    workdir = REPO / ".geopush" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    services = start_services(workdir, "geopush_bench")
    try:
        report = measure(args, services, workdir)
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
    finally:
        if args.keep_services:
            print(f"services left running: GEOPUSH_DATABASE_URL={services.database_url} "
                  f"GEOPUSH_REDIS_URL={services.redis_url}", file=sys.stderr)
        else:
            services.stop()
        for leftover in workdir.glob("requests-*"):
            leftover.unlink()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
