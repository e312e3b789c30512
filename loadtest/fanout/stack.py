"""What the fan-out benchmark runs: its private PostgreSQL (a copy of the seeded
template) and Redis (one server, or a 3-master Redis Cluster), and ``make run``'s
process set (web, matchers, senders per platform, relay) against fake APNs and FCM
fleets (``loadtest.delivery.fleet``), with the counts per kind as options."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from loadtest.bench_common import BenchError, Services, stop_process, wait_http
from loadtest.delivery import REPO
from loadtest.delivery.fleet import Fleet
from loadtest.delivery.procstats import group_cpu, proc_status_kb
from loadtest.delivery.sender import sender_env
from loadtest.delivery.tokens import apns_jwt
from loadtest.fanout import WORKDIR
from loadtest.fanout_seed import SeedSpec, copy_template, ensure_template, seed_database
from server import keys
from server.dev.devenv import PrivatePostgres, PrivateRedis, free_port, wait_for_port
from server.dev.devkeys import ensure_apns_key
from workers.apns_token import TOKEN_LIFETIME_S

DATABASE = "geopush_bench_fanout"
CLUSTER_MASTERS = 3


# -- Redis Cluster ----------------------------------------------------------------------


@dataclass
class PrivateCluster:
    """Three ``redis-server --cluster-enabled yes`` masters on free ports, joined with
    ``redis-cli --cluster create``; nothing persisted."""

    directory: Path
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> PrivateCluster:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not binary or not cli:
            raise BenchError("redis-server and redis-cli are needed for --redis-cluster")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.ports = [cluster_port() for _ in range(CLUSTER_MASTERS)]
        try:
            self._start(binary, cli)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, binary: str, cli: str) -> None:
        for port in self.ports:
            node = self.directory / str(port)
            node.mkdir(parents=True)
            self.procs.append(subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node / "nodes.conf"), "--dir", str(node),
                 "--save", "", "--appendonly", "no", "--logfile", str(node / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        for port in self.ports:
            wait_for_port(port)
        subprocess.run([cli, "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
                       check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while True:
            info = subprocess.run([cli, "-p", str(self.ports[0]), "cluster", "info"],
                                  capture_output=True, text=True, check=False).stdout
            if "cluster_state:ok" in info:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the cluster did not become ready: {info}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs = []


def cluster_port() -> int:
    """A free port for a cluster node: at most 55535, and its cluster bus port (10,000
    higher) free too."""
    for _ in range(100):
        port = free_port()
        if port > 55535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise BenchError("no free port pair for a Redis Cluster node")


def redis_client(url: str, cluster: bool) -> Any:
    """A synchronous client (strings decoded) for the benchmark's own reads."""
    if cluster:
        return redis.RedisCluster.from_url(url, decode_responses=True)
    return redis.Redis.from_url(url, decode_responses=True)


def async_redis_client(url: str, cluster: bool) -> Any:
    import redis.asyncio as aioredis
    if cluster:
        return aioredis.RedisCluster.from_url(url, decode_responses=True)
    return aioredis.Redis.from_url(url, decode_responses=True)


# -- PostgreSQL and Redis -----------------------------------------------------------------


@dataclass
class FanoutServices(Services):
    cluster: PrivateCluster | None = None
    given_cluster: bool = False   # the URLs given name a Redis Cluster

    @property
    def is_cluster(self) -> bool:
        return self.cluster is not None or self.given_cluster

    def pids(self) -> dict[str, int]:
        out = super().pids()
        if self.cluster is not None and self.cluster.procs:
            out["redis"] = self.cluster.procs[0].pid
        return out

    def redis_pids(self) -> list[int]:
        if self.cluster is not None:
            return [p.pid for p in self.cluster.procs]
        return [self.pids()["redis"]] if "redis" in self.pids() else []

    def stop(self) -> None:
        super().stop()
        if self.cluster is not None:
            self.cluster.stop()


def start_services(spec: SeedSpec, *, cluster: bool, workdir: Path = WORKDIR
                   ) -> FanoutServices:
    """GEOPUSH_DATABASE_URL / GEOPUSH_REDIS_URL when both are set (seeded in place when
    they hold fewer devices than ``spec``); otherwise a private PostgreSQL with a fresh
    copy of the seeded template, and a private Redis (or Redis Cluster), each run."""
    db_url = os.environ.get("GEOPUSH_DATABASE_URL", "")
    redis_url = os.environ.get("GEOPUSH_REDIS_URL", "")
    if db_url and redis_url:
        asyncio.run(seed_if_needed(db_url, spec))
        return FanoutServices(db_url, redis_url)
    if db_url or redis_url:
        sys.exit("bench: set both GEOPUSH_DATABASE_URL and GEOPUSH_REDIS_URL, or neither")
    pg = PrivatePostgres(workdir / "postgres").start()
    try:
        url = copy_template(pg, ensure_template(pg, spec), DATABASE)
        if cluster:
            nodes = PrivateCluster(workdir / "cluster").start()
            return FanoutServices(url, nodes.url(), pg, None, nodes)
        private = PrivateRedis(workdir / "redis").start()
        return FanoutServices(url, private.url(), pg, private)
    except BaseException:
        pg.stop()
        raise


async def seed_if_needed(database_url: str, spec: SeedSpec) -> None:
    import asyncpg

    from loadtest.fanout_seed import SEEDED
    from server.store.migrate import migrate

    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        have = await conn.fetchval(f"SELECT count(*) FROM devices WHERE {SEEDED}")  # noqa: S608 (a constant)
    finally:
        await conn.close()
    if have < spec.devices:
        await seed_database(database_url, SeedSpec(spec.devices - have, spec.near_me,
                                                   spec.seed))


# -- the process set ----------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    web: int = 1
    matcher: int = 1
    apns: int = 1
    fcm: int = 1
    relay: int = 1
    fake_processes: int = 2   # per platform


@dataclass
class Stack:
    """The running processes; ``procs[kind]`` in start order."""

    services: FanoutServices
    fleets: dict[str, Fleet]
    log_dir: Path
    web_port: int = 0
    apns_token: str = ""
    procs: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    metrics_ports: dict[int, int] = field(default_factory=dict)   # pid -> port
    rss: dict[str, float] = field(default_factory=dict)          # kind -> max MB seen
    _sampling: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def pids(self, kind: str) -> list[int]:
        return [p.pid for p in self.procs.get(kind, [])]

    def cpu_roots(self) -> dict[str, list[int]]:
        roots = {kind: self.pids(kind) for kind in self.procs}
        roots["fakes"] = [pid for f in self.fleets.values() for pid in f.pids]
        pg = self.services.pids().get("postgres")
        if pg:
            roots["postgres"] = [pg]
        roots["redis"] = self.services.redis_pids()
        return roots

    def cpu(self) -> dict[str, dict[int, float]]:
        return {kind: group_cpu(pids) for kind, pids in self.cpu_roots().items()}

    def delivered(self) -> int:
        return sum(f.delivered() for f in self.fleets.values())

    def matcher_metrics(self) -> dict[str, float]:
        """Sums over the matchers of their match time and fan-out counters."""
        out = {"match_seconds": 0.0, "matched": 0.0, "enqueued": 0.0}
        names = {"geopush_match_seconds_sum": "match_seconds",
                 "geopush_match_seconds_count": "matched",
                 "geopush_match_fanout_devices_sum": "enqueued"}
        for pid in self.pids("matcher"):
            text = _get_text(f"http://127.0.0.1:{self.metrics_ports[pid]}/metrics")
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in names:
                    out[names[name]] += float(value)
        return out

    def check_alive(self) -> None:
        for kind, procs in self.procs.items():
            for proc in procs:
                if proc.poll() is not None:
                    raise BenchError(f"a {kind} process exited with {proc.returncode}; "
                                     f"see its log in {self.log_dir}")

    def _sample_rss(self) -> None:
        while not self._sampling.is_set():
            for kind in ("matcher", "apns", "fcm", "web"):
                for pid in self.pids(kind):
                    mb = proc_status_kb(pid, "VmRSS") / 1024
                    self.rss[kind] = max(self.rss.get(kind, 0.0), mb)
            self._sampling.wait(0.25)

    def peak_rss(self) -> dict[str, float]:
        """Per kind, the highest of the sampled VmRSS and the kernel's VmHWM."""
        out = dict(self.rss)
        for kind in ("matcher", "apns", "fcm", "web"):
            for pid in self.pids(kind):
                out[kind] = max(out.get(kind, 0.0), proc_status_kb(pid, "VmHWM") / 1024)
        return {k: round(v, 1) for k, v in out.items()}

    def stop(self) -> dict[str, int | None]:
        """Every process SIGTERMed (web first, fakes last); their exit codes."""
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        codes: dict[str, int | None] = {}
        for kind in ("web", "relay", "matcher", "apns", "fcm"):
            for n, proc in enumerate(self.procs.get(kind, [])):
                codes[f"{kind}-{n}"] = stop_process(proc, timeout=30)
        for fleet in self.fleets.values():
            fleet.stop()
        return codes


def _get_text(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (local URL)
        return str(resp.read().decode())


def start_stack(services: FanoutServices, counts: Counts, certs_dir: Path, log_dir: Path,
                *, hourly_limit: int, admin_token: str,
                extra_env: dict[str, str] | None = None) -> Stack:
    fleets: dict[str, Fleet] = {}
    stack = Stack(services, fleets, log_dir)
    try:
        for platform in ("apns", "fcm"):
            fleets[platform] = Fleet(platform, counts.fake_processes, certs_dir, log_dir).start()
        # One provider token for the senders and the ceiling's h2load alike: the fake
        # APNs (as Apple) refuses a second one within 20 minutes.
        stack.apns_token = apns_jwt(certs_dir)
        key = ensure_apns_key(certs_dir)
        client = redis_client(services.redis_url, services.is_cluster)
        try:
            client.set(keys.apns_provider_token(key.team_id, key.key_id),
                       json.dumps({"jwt": stack.apns_token, "iat": int(time.time())}),
                       ex=TOKEN_LIFETIME_S)
        finally:
            client.close()
        common = {
            "GEOPUSH_DATABASE_URL": services.database_url,
            "GEOPUSH_REDIS_URL": services.redis_url,
            "GEOPUSH_LOG_LEVEL": "INFO",
            "GEOPUSH_DEVICE_PUSHES_PER_HOUR": str(hourly_limit),
            "GEOPUSH_ADMIN_TOKEN": admin_token,
            **(extra_env or {}),
        }
        base = {k: v for k, v in os.environ.items() if not k.startswith("GEOPUSH_")}
        geopush = str(Path(sys.executable).with_name("geopush"))
        stack.web_port = free_port()

        def launch(kind: str, n: int, argv: list[str], env: dict[str, str]) -> None:
            port = free_port()
            env = {**env, "GEOPUSH_CONSUMER_NAME": f"bench-{kind}-{n}",
                   "GEOPUSH_METRICS_HOST": "127.0.0.1", "GEOPUSH_METRICS_PORT": str(port)}
            with (log_dir / f"{kind}-{n}.log").open("wb") as log:
                proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
            stack.procs.setdefault(kind, []).append(proc)
            stack.metrics_ports[proc.pid] = port

        for n in range(counts.web):
            # Several web processes share the port (SO_REUSEPORT, as deployed).
            launch("web", n, [geopush, "serve"], {
                **base, **common, "GEOPUSH_HTTP_HOST": "127.0.0.1",
                "GEOPUSH_HTTP_PORT": str(stack.web_port)})
        for kind, count in (("matcher", counts.matcher), ("relay", counts.relay)):
            for n in range(count):
                launch(kind, n, [geopush, "worker", kind], {**base, **common})
        for platform in ("apns", "fcm"):
            env = sender_env(platform, services, fleets[platform], certs_dir, common)
            env.pop("_SHOWN")
            for n in range(getattr(counts, platform)):
                launch(platform, n, [geopush, "worker", platform], env)
        for proc in stack.procs["web"]:
            wait_http(f"{stack.web_url}/healthz", proc=proc, timeout=60)
        for kind in ("matcher", "relay", "apns", "fcm"):
            for proc in stack.procs.get(kind, []):
                wait_http(f"http://127.0.0.1:{stack.metrics_ports[proc.pid]}/metrics",
                          proc=proc, timeout=60)
    except BaseException:
        stack.stop()
        raise
    stack._sampler = threading.Thread(target=stack._sample_rss, daemon=True)
    stack._sampler.start()
    return stack

