"""Delivery benchmark: pushes per second of ONE sender process against the fake gateway,
next to the fake's own ceiling measured in the same run with a C load generator.

    python -m loadtest.bench_delivery [--platform apns|fcm|both] [--pushes 100000]
                                      [--fake-processes 2] [--duration 10]
                                      [--client-seconds 8] [--sender-env NAME=VALUE]
                                      [--placement shared|split|both]
                                      [--json PATH] [--py-spy PATH] [--keep-services]

Needs (Debian packages): ``nghttp2-client`` (h2load),
``postgresql`` + ``postgis`` and ``redis-server`` (unless GEOPUSH_DATABASE_URL and
GEOPUSH_REDIS_URL are set); py-spy in the venv only for ``--py-spy``. It exits with the
apt-get line to run when one is missing.

What it does, per platform:

1. Starts a private PostgreSQL+PostGIS and Redis under ``.geopush/bench-delivery/`` (a
   fresh database each run) unless GEOPUSH_DATABASE_URL / GEOPUSH_REDIS_URL are set;
   migrates; stores one active, alerting incident and ``--pushes`` devices.
2. Starts the fake gateway as ``--fake-processes`` processes (uvloop; the fakes' own
   code, see ``serve-fake-apns`` / ``serve-fake-fcm`` below) behind one listening
   socket held here, which hands each new connection to the next process in turn
   (SCM_RIGHTS), so the load is even however few connections a client opens. Drives
   it with h2load for ``--duration`` seconds, with requests like the sender's (same
   headers and payload, a valid ES256 provider token / OAuth bearer token) over the
   sender's protocol (HTTP/2): the ceiling, in requests per second.
3. With a fresh fake (the fake APNs refuses a second provider token within 20
   minutes), runs geopush's gateway client alone (``ApnsClient`` / ``FcmClient``, one
   fixed message, 200 concurrent sends, no Redis, PostgreSQL or sender loop) for
   ``--client-seconds``: what any sender built on that client could reach at best.
4. With a fresh fake again, enqueues ``--pushes`` pushes for distinct devices straight
   onto the Redis push stream, starts ONE ``geopush worker apns|fcm`` process and
   measures pushes/s from the first to the last delivery at the fake, sampling the
   sender's RSS (VmRSS) every 0.5 s; VmHWM gives the peak.
5. Checks every device got exactly one push, every outcome is recorded as 'sent', the
   stream is fully acknowledged, and the sender exits 0 on SIGTERM.
6. Does 2, 4 and 5 once per ``--placement``: ``shared`` leaves every process on
   every CPU; ``split`` pins the fake to half the CPUs and what drives it (h2load, or
   the sender with PostgreSQL and Redis) to the other half, as a gateway on other
   machines would be. ``both`` (the default) runs shared, then split.
7. Prints a table (rate, ceiling, ratio, RSS, CPU seconds per process group);
   ``--json PATH`` writes the same.

Figures on a shared machine are noisy: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from loadtest.bench_common import (
    BenchError,
    Services,
    descendants,
    pin,
    proc_cpu,
    require_tools,
    start_services,
    stop_process,
)

LOADTEST = Path(__file__).resolve().parent
REPO = LOADTEST.parent
WORKDIR = REPO / ".geopush" / "bench-delivery"

# tool -> the Debian package that provides it

AGENCY = "bench-delivery"
TARGET_RATIO = 0.7
TARGET_RSS_MB = 150.0
STALL_TIMEOUT_S = 60.0
PUBLIC_LOCATION = "5300 block of 24th Ave NE"


def free_port() -> int:
    from server.dev.devenv import free_port as _free_port

    return _free_port()


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` figure of /proc/PID/status (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_cpu(roots: Sequence[int]) -> dict[int, float]:
    return {pid: proc_cpu(pid) for root in roots for pid in descendants(root)}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def http_json(url: str, method: str = "GET", data: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float = 60.0) -> Any:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local URLs)
        body = resp.read()
    return json.loads(body) if body else None


def wait_until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            if check():
                return
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.1)


# -- services ---------------------------------------------------------------------------


async def seed_fanout(database_url: str, platform: str, count: int
                      ) -> tuple[str, list[tuple[str, str]]]:
    """One active alerting incident and ``count`` devices of ``platform``; returns the
    incident id and (device id, token) pairs."""
    import asyncpg

    from server.store.migrate import migrate

    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """INSERT INTO agencies (id, name, timezone, signing_secret)
               VALUES ($1, 'Delivery benchmark', 'UTC', 'not-used')
               ON CONFLICT (id) DO NOTHING""", AGENCY)
        incident_id: str = str(await conn.fetchval(
            """INSERT INTO incidents (agency_id, external_id, revision, status, call_type,
                                      category, occurred_at, geom, public_point,
                                      public_location, decision)
               VALUES ($1, $2, now(), 'active', 'Fire in Building', 'structure_fire',
                       now() - interval '2 minutes',
                       ST_SetSRID(ST_MakePoint(-122.301946, 47.66707), 4326),
                       ST_SetSRID(ST_MakePoint(-122.302, 47.667), 4326), $3, 'alert')
               RETURNING id""", AGENCY, f"bench-{platform}-{uuid.uuid4()}", PUBLIC_LOCATION))
        prefix = f"bench-{platform}-{uuid.uuid4().hex[:8]}-"
        token_sql = ("encode(sha256(convert_to($2 || g, 'UTF8')), 'hex')" if platform == "apns"
                     else "$2 || md5(g::text) || ':APA91b' || md5('x' || g)")
        rows = await conn.fetch(
            f"""INSERT INTO devices (platform, token, secret_hash)
                SELECT $1, {token_sql}, '\\x00'::bytea FROM generate_series(1, $3::int) g
                RETURNING id::text, token""",  # noqa: S608 (no user input)
            platform, prefix, count)
    finally:
        await conn.close()
    return incident_id, [(r["id"], r["token"]) for r in rows]


async def _outcomes(database_url: str, incident_id: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT outcome, count(*) AS n FROM deliveries WHERE incident_id = $1::uuid
                GROUP BY outcome""", incident_id)
    finally:
        await conn.close()
    return {r["outcome"]: int(r["n"]) for r in rows}


def make_pushes(platform: str, incident_id: str, devices: Sequence[tuple[str, str]]
                ) -> Iterator[dict[str, str]]:
    from workers.push import Push

    now = time.time()
    for device_id, token in devices:
        yield Push(
            incident_id=incident_id, device_id=device_id, platform=platform, token=token,
            locale="en", category="structure_fire", public_location=PUBLIC_LOCATION,
            lat=47.667, lon=-122.302, occurred_at=now - 120, received_at=now,
            expires_at=now + 3600,
        ).to_fields()


def enqueue(redis_url: str, platform: str, fields: Iterator[dict[str, str]]) -> int:
    """XADD the pushes onto the platform's push stream (as the matcher would)."""
    import redis

    from server import keys

    client = redis.Redis.from_url(redis_url)
    stream = keys.push_stream(platform)
    client.delete(stream, keys.retry_schedule(platform))
    count = 0
    try:
        pipe = client.pipeline(transaction=False)
        for entry in fields:
            flat: dict[Any, Any] = entry
            pipe.xadd(stream, flat)
            count += 1
            if count % 2000 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()
    return count


def stream_state(redis_url: str, platform: str) -> dict[str, Any]:
    import redis

    from server import keys

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        groups: Any = client.xinfo_groups(keys.push_stream(platform))
        retries = int(client.zcard(keys.retry_schedule(platform)))
    finally:
        client.close()
    group = groups[0] if groups else {}
    return {"pending": group.get("pending"), "lag": group.get("lag"), "retries": retries}


# -- the fake gateways, several processes on one port -----------------------------------


def serve_fake_apns(args: argparse.Namespace) -> None:
    """One fake APNs process of a fleet: ``loadtest.fake_apns.FakeApns`` unchanged, but
    its connections are handed over by the fleet (``_take_connections``) instead of
    accepted on a port of its own; its control API has a port of its own."""
    import uvloop

    from loadtest.fake_apns import FakeApns, _ApnsConnection
    from loadtest.h2server import remember_huffman_strings
    from server.dev.devkeys import ensure_apns_key, ensure_tls, public_key_pem

    remember_huffman_strings()   # this process is a fake only: see loadtest.h2server

    async def main() -> None:
        tls = ensure_tls(args.certs_dir)
        key = ensure_apns_key(args.certs_dir)
        fake = FakeApns(
            tls=tls, provider_keys={key.key_id: public_key_pem(key.key_file.read_bytes())},
            team_id=key.team_id, topic=key.topic)
        await fake.start("127.0.0.1", 0, args.control_port)   # its own port goes unused
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.server_cert, tls.server_key)
        context.set_alpn_protocols(["h2"])
        _take_connections(args.handoff_fd, lambda: _ApnsConnection(fake), context)
        await _serve_until_signalled(fake.stop)

    uvloop.run(main())


def serve_fake_fcm(args: argparse.Namespace) -> None:
    """One fake FCM process of a fleet: ``loadtest.fake_fcm.FakeFcm``'s own application
    (HTTP/1.1 and h2c on the same connections, as ``FakeFcm.protocol_factory`` tells
    them apart), on connections handed over by the fleet, plus a control port of its own.

    Access tokens live in one process's memory, so with several processes a token
    issued by one is refused by the others. Every process here issues the same token
    (``--shared-token``), and the benchmark asks each for it once through its control
    port: after that, the token any of them hands the sender is known to all."""
    import types

    import uvloop
    from aiohttp import web

    from loadtest import fake_fcm
    from loadtest.fake_fcm import FakeFcm
    from loadtest.h2server import remember_huffman_strings
    from server.dev.devkeys import DEV_FCM_PROJECT, ensure_fcm_service_account, public_key_pem

    remember_huffman_strings()   # this process is a fake only: see loadtest.h2server
    shared = types.SimpleNamespace(token_urlsafe=lambda _n=32: args.shared_token)
    setattr(fake_fcm, "secrets", shared)  # noqa: B010 (the module's secrets import)

    async def main() -> None:
        fake = FakeFcm(project_id=DEV_FCM_PROJECT, max_deliveries=None)
        sa_path = ensure_fcm_service_account(
            args.certs_dir, f"http://127.0.0.1:{args.port}/token", DEV_FCM_PROJECT)
        sa = json.loads(sa_path.read_text())
        fake.trust(sa["client_email"], public_key_pem(sa["private_key"].encode()))
        runner = web.AppRunner(fake.app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.control_port).start()
        fake.host, fake.port = "127.0.0.1", args.port
        assert runner.server is not None
        # HTTP/2 with prior knowledge (what h2load and the sender send) or HTTP/1.1
        _take_connections(args.handoff_fd, fake.protocol_factory(runner.server), None)
        await _serve_until_signalled(runner.cleanup)

    uvloop.run(main())


def _take_connections(handoff_fd: int, factory: Any, context: ssl.SSLContext | None) -> None:
    """Serve the connections the fleet passes over ``handoff_fd`` (SCM_RIGHTS)."""
    import socket

    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=handoff_fd)
    channel.setblocking(False)

    def receive() -> None:
        try:
            _, fds, _, _ = socket.recv_fds(channel, 16, 16)
        except BlockingIOError:
            return
        if not fds:
            loop.remove_reader(channel)   # the fleet is gone
            return
        for fd in fds:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(factory, sock, ssl=context))
            handshakes.add(task)
            task.add_done_callback(handshakes.discard)

    handshakes: set[asyncio.Task[Any]] = set()
    loop.add_reader(channel, receive)


async def _serve_until_signalled(stop: Any) -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    print("READY", flush=True)
    try:
        await done.wait()
    finally:
        await stop()


@dataclass
class Fleet:
    """``count`` fake processes of one platform behind one port."""

    platform: str
    count: int
    certs_dir: Path
    log_dir: Path
    port: int = 0
    control_ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _listener: Any = None
    _channels: list[Any] = field(default_factory=list)
    _acceptor: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Fleet:
        import socket

        self.control_ports = [free_port() for _ in range(self.count)]
        shared_token = uuid.uuid4().hex
        # One listening socket here; connections go to the processes in turn. With
        # SO_REUSEPORT the kernel spreads them by a hash instead, and 4 connections over
        # 2 processes land 3:1 or 4:0 more than half the time: one fake process, and
        # not the client, would then set the pace.
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        # Key material first, once: processes creating it side by side would race.
        from server.dev.devkeys import (
            DEV_FCM_PROJECT,
            ensure_apns_key,
            ensure_fcm_service_account,
            ensure_tls,
        )

        ensure_tls(self.certs_dir)
        ensure_apns_key(self.certs_dir)
        ensure_fcm_service_account(self.certs_dir, f"http://127.0.0.1:{self.port}/token",
                                   DEV_FCM_PROJECT)
        for n, control in enumerate(self.control_ports):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._channels.append(ours)
            log = (self.log_dir / f"fake-{self.platform}-{n}.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "loadtest.bench_delivery", f"serve-fake-{self.platform}",
                 "--port", str(self.port), "--control-port", str(control),
                 "--certs-dir", str(self.certs_dir), "--shared-token", shared_token,
                 "--handoff-fd", str(theirs.fileno())],
                cwd=REPO, stdout=subprocess.PIPE, stderr=log, pass_fds=[theirs.fileno()])
            theirs.close()
            log.close()
            self.procs.append(proc)
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith(b"READY"):
                self.stop()
                raise BenchError(f"a fake {self.platform} did not start; see {self.log_dir}")
        self._acceptor = threading.Thread(target=self._hand_out, daemon=True)
        self._acceptor.start()
        if self.platform == "fcm":
            try:
                for port in self.control_ports:  # every process learns the shared token
                    fcm_access_token(self.certs_dir, port)
            except BaseException:
                self.stop()
                raise
        return self

    def _hand_out(self) -> None:
        import socket

        turn = 0
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                n = turn % len(self._channels)
                turn += 1
                try:
                    socket.send_fds(self._channels[n], [b"c"], [connection.fileno()])
                except OSError:
                    return

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for channel in self._channels:
            channel.close()
        self._channels = []
        for proc in self.procs:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def delivered(self) -> int:
        total = 0
        for port in self.control_ports:
            stats = http_json(f"http://127.0.0.1:{port}/_fake/stats")
            total += int(stats["deliveries"] if self.platform == "apns" else stats["delivered"])
        return total

    def deliveries(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for port in self.control_ports:
            out.extend(http_json(f"http://127.0.0.1:{port}/_fake/deliveries", timeout=300))
        return out

    def set_latency(self, ms: int) -> None:
        for port in self.control_ports:
            body = {"rate": 1, "status": 200, "latency_ms": ms} if self.platform == "apns" \
                else {"rate": 0, "latency_ms": ms}
            http_json(f"http://127.0.0.1:{port}/_fake/faults", "POST", json.dumps(body).encode(),
                      {"Content-Type": "application/json"})


# -- the ceiling: h2load ----------------------------------------------------------------


@dataclass
class Ceiling:
    tool: str
    command: str
    seconds: float
    requests: int
    succeeded: int
    failed: int
    rate: float
    cpu_s: dict[str, float]


def apns_jwt(certs_dir: Path) -> str:
    import jwt

    from server.dev.devkeys import ensure_apns_key

    key = ensure_apns_key(certs_dir)
    return jwt.encode({"iss": key.team_id, "iat": int(time.time())},
                      key.key_file.read_text(), algorithm="ES256",
                      headers={"kid": key.key_id})


def fcm_access_token(certs_dir: Path, port: int) -> str:
    """An OAuth access token from the fake's /token, by the JWT-bearer grant."""
    import jwt

    sa = json.loads((certs_dir / "fcm-service-account.json").read_text())
    now = int(time.time())
    assertion = jwt.encode(
        {"iss": sa["client_email"], "scope": "https://www.googleapis.com/auth/firebase.messaging",
         "aud": "https://oauth2.googleapis.com/token", "iat": now, "exp": now + 3600},
        sa["private_key"], algorithm="RS256")
    form = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion,
    }).encode()
    answer = http_json(f"http://127.0.0.1:{port}/token", "POST", form,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    return str(answer["access_token"])


def sample_request(platform: str, certs_dir: Path, fleet: Fleet, tmp: Path
                   ) -> tuple[str, list[str], Path]:
    """URL, headers and body file of a request like the sender's."""
    import datetime as dt

    from workers.push import Push

    now = time.time()
    push = Push(
        incident_id=str(uuid.uuid4()), device_id=str(uuid.uuid4()), platform=platform,
        token="", locale="en", category="structure_fire", public_location=PUBLIC_LOCATION,
        lat=47.667, lon=-122.302, occurred_at=now - 120, received_at=now,
        expires_at=now + 3600)
    body = tmp / f"{platform}-body.json"
    if platform == "apns":
        from workers.apns import build_payload

        token = "0123456789abcdef" * 4
        body.write_text(json.dumps(build_payload(push, dt.datetime.now(dt.UTC))))
        headers = [
            f"authorization: bearer {apns_jwt(certs_dir)}",
            f"apns-id: {uuid.uuid4()}", "apns-topic: org.geopush.app",
            f"apns-collapse-id: {push.incident_id}", f"apns-expiration: {int(now + 3600)}",
            "apns-priority: 10", "apns-push-type: alert",
        ]
        return f"https://127.0.0.1:{fleet.port}/3/device/{token}", headers, body
    from server.dev.devkeys import DEV_FCM_PROJECT
    from workers.fcm import build_message

    push = msgspec.structs.replace(push, token="bench-ceiling:APA91b" + "x" * 140)
    message = build_message(push, dt.datetime.now(dt.UTC))
    body.write_text(json.dumps({"message": message}, separators=(",", ":")))
    headers = [f"authorization: Bearer {fcm_access_token(certs_dir, fleet.port)}",
               "content-type: application/json; charset=UTF-8"]
    return (f"http://127.0.0.1:{fleet.port}/v1/projects/{DEV_FCM_PROJECT}/messages:send",
            headers, body)


_H2LOAD_REQS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed")
_H2LOAD_TIME = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")


def run_h2load(platform: str, fleet: Fleet, services: Services, certs_dir: Path, tmp: Path,
               *, duration: int, clients: int, streams: int, threads: int,
               cpus: frozenset[int] | None = None) -> Ceiling:
    url, headers, body = sample_request(platform, certs_dir, fleet, tmp)
    cmd = ["h2load", "-D", str(duration), "--warm-up-time", "2", "-c", str(clients),
           "-m", str(streams), "-t", str(threads), "-d", str(body)]
    # HTTP/2 (h2c with prior knowledge for the fake FCM's http:// URL). The same
    # response table as geopush's client announces: none for APNs, which spares the
    # fake's encoder work; 4096 bytes for FCM, whose repeated response headers it
    # indexes. The ceiling gets every advantage the sender takes.
    table = 0 if platform == "apns" else 4096
    cmd.insert(1, f"--header-table-size={table}")
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    roots = {"fake": fleet.pids, **{k: [v] for k, v in services.pids().items()}}
    before = {name: group_cpu(pids) for name, pids in roots.items()}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _place([proc.pid], cpus)
    h2load_cpu = 0.0
    while proc.poll() is None:
        h2load_cpu = max(h2load_cpu, proc_cpu(proc.pid))
        time.sleep(0.2)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    cpu = {name: cpu_used(before[name], group_cpu(pids)) for name, pids in roots.items()}
    cpu["h2load"] = h2load_cpu
    reqs, timing = _H2LOAD_REQS.search(output), _H2LOAD_TIME.search(output)
    if proc.returncode != 0 or reqs is None or timing is None:
        raise BenchError(f"h2load failed ({proc.returncode}):\n{output}")
    seconds = float(timing.group(1)) / (1000 if timing.group(2) == "ms" else 1)
    succeeded, failed = int(reqs.group(4)), int(reqs.group(5))
    if failed or "2xx" not in output or re.search(r"[1-9]\d* [345]xx", output):
        raise BenchError(f"h2load saw failures:\n{output}")
    shown = [c if " " not in c else f"'{c.split(': ')[0]}: …'" for c in cmd]
    del started
    return Ceiling("h2load", " ".join(shown), seconds, int(reqs.group(1)), succeeded, failed,
                   float(timing.group(3)), cpu)


# -- one sender process -----------------------------------------------------------------


@dataclass
class SenderRun:
    pushes: int
    delivered: int
    distinct_tokens: int
    seconds: float
    rate: float
    rss_max_mb: float
    rss_hwm_mb: float
    rss_samples_mb: list[float]
    exit_code: int | None
    outcomes: dict[str, int]
    stream: dict[str, Any]
    cpu_s: dict[str, float]
    env: dict[str, str]


def sender_env(platform: str, services: Services, fleet: Fleet, certs_dir: Path,
               extra: dict[str, str]) -> dict[str, str]:
    from server.dev.devkeys import DEV_FCM_PROJECT, ensure_apns_key, ensure_tls

    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOPUSH_")}
    settings = {
        "GEOPUSH_DATABASE_URL": services.database_url,
        "GEOPUSH_REDIS_URL": services.redis_url,
        "GEOPUSH_CONSUMER_NAME": f"bench-{platform}",
        "GEOPUSH_LOG_LEVEL": "WARNING",
    }
    if platform == "apns":
        key = ensure_apns_key(certs_dir)
        settings.update({
            "GEOPUSH_APNS_KEY_FILE": str(key.key_file), "GEOPUSH_APNS_KEY_ID": key.key_id,
            "GEOPUSH_APNS_TEAM_ID": key.team_id, "GEOPUSH_APNS_TOPIC": key.topic,
            "GEOPUSH_APNS_HOST": "127.0.0.1", "GEOPUSH_APNS_PORT": str(fleet.port),
            "GEOPUSH_APNS_CA_FILE": str(ensure_tls(certs_dir).ca_cert),
        })
    else:
        settings.update({
            "GEOPUSH_FCM_SERVICE_ACCOUNT_FILE": str(certs_dir / "fcm-service-account.json"),
            "GEOPUSH_FCM_PROJECT": DEV_FCM_PROJECT,
            "GEOPUSH_FCM_ENDPOINT": f"http://127.0.0.1:{fleet.port}",
        })
    settings.update(extra)
    env.update(settings)
    return {**env, "_SHOWN": " ".join(f"{k}={v}" for k, v in sorted(settings.items())
                                      if "URL" not in k and "FILE" not in k)}


def run_sender(platform: str, services: Services, fleet: Fleet, certs_dir: Path,
               log_dir: Path, pushes: int, extra_env: dict[str, str],
               py_spy: Path | None, cpus: frozenset[int] | None = None) -> SenderRun:
    incident_id, devices = asyncio.run(seed_fanout(services.database_url, platform, pushes))
    queued = enqueue(services.redis_url, platform, make_pushes(platform, incident_id, devices))
    assert queued == pushes
    env = sender_env(platform, services, fleet, certs_dir, extra_env)
    shown = env.pop("_SHOWN")
    roots = {"fake": fleet.pids, **{k: [v] for k, v in services.pids().items()}}
    before = {name: group_cpu(pids) for name, pids in roots.items()}
    log = (log_dir / f"sender-{platform}.log").open("wb")
    sender = subprocess.Popen(
        [str(Path(sys.executable).with_name("geopush")), "worker", platform],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    _place([sender.pid], cpus)
    log.close()
    spy: subprocess.Popen[bytes] | None = None
    if py_spy is not None:
        spy = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
             str(sender.pid), "--rate", "200", "--format",
             "raw" if py_spy.suffix == ".txt" else "flamegraph", "-o", str(py_spy)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[float] = []
    hwm = 0.0
    stop_sampling = threading.Event()

    def sample_rss() -> None:
        while not stop_sampling.is_set():
            kb = proc_status_kb(sender.pid, "VmRSS")
            if kb:
                samples.append(kb / 1024)
            stop_sampling.wait(0.5)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    delivered, last_progress, last_count = 0, time.monotonic(), 0
    try:
        while delivered < pushes:
            if sender.poll() is not None:
                raise BenchError(f"the sender exited with {sender.returncode}; "
                                 f"see {log_dir / f'sender-{platform}.log'}")
            time.sleep(0.5)
            delivered = fleet.delivered()
            if delivered > last_count:
                last_count, last_progress = delivered, time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise BenchError(f"no progress for {STALL_TIMEOUT_S:.0f} s at {delivered} "
                                 f"of {pushes}: {stream_state(services.redis_url, platform)}")
        # recorded and acknowledged before it is stopped
        wait_until(lambda: stream_state(services.redis_url, platform)["pending"] == 0
                   and stream_state(services.redis_url, platform)["lag"] == 0,
                   "the stream to be acknowledged", timeout=30)
        hwm = proc_status_kb(sender.pid, "VmHWM") / 1024
    finally:
        stop_sampling.set()
        sampler.join()
        cpu = {name: cpu_used(before[name], group_cpu(pids)) for name, pids in roots.items()}
        cpu["sender"] = proc_cpu(sender.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
            stop_process(spy)
        exit_code = stop_process(sender, timeout=30)
    items = fleet.deliveries()
    arrivals = sorted(float(d["arrived_at"]) for d in items)
    seconds = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    tokens = {d["token"] if platform == "apns" else d["message"]["token"] for d in items}
    return SenderRun(
        pushes=pushes, delivered=len(items), distinct_tokens=len(tokens), seconds=seconds,
        rate=(len(items) - 1) / seconds if seconds else 0.0,
        rss_max_mb=max(samples, default=0.0), rss_hwm_mb=hwm,
        rss_samples_mb=[round(s, 1) for s in samples], exit_code=exit_code,
        outcomes=asyncio.run(_outcomes(services.database_url, incident_id)),
        stream=stream_state(services.redis_url, platform), cpu_s=cpu, env={"shown": shown},
    )


# -- the client alone: the transport's share of a sender's cost ------------------------


@dataclass
class ClientOnly:
    """geopush's gateway client (ApnsClient / FcmClient) sending one fixed message as
    fast as it can: no Redis, no PostgreSQL, no sender loop. What any Python sender
    built on it could reach at best. FCM goes through ``start_body``, as the sender
    does; APNs through ``send``."""

    requests: int
    seconds: float
    rate: float
    cpu_s: dict[str, float]


def client_only(args: argparse.Namespace) -> None:
    """(internal) run in a process of its own, so that its CPU is its own."""
    import uvloop

    uvloop.run(_client_only(args))


async def _client_only(args: argparse.Namespace) -> None:
    import datetime as dt

    from server.dev.devkeys import DEV_FCM_PROJECT, ensure_apns_key, ensure_tls
    from workers.gateways.waiting import result_of
    from workers.push import Push

    now = time.time()
    push = Push(
        incident_id=str(uuid.uuid4()), device_id=str(uuid.uuid4()), platform=args.platform,
        token="0123456789abcdef" * 4, locale="en", category="structure_fire",
        public_location=PUBLIC_LOCATION, lat=47.667, lon=-122.302, occurred_at=now - 120,
        received_at=now, expires_at=now + 3600)
    start: Callable[[Callable[[Any], None]], None]
    if args.platform == "apns":
        from workers.apns import build_payload
        from workers.gateways.apns_client import ApnsClient, ApnsResponse

        key = ensure_apns_key(args.certs_dir)
        context = ssl.create_default_context(cafile=str(ensure_tls(args.certs_dir).ca_cert))
        client: Any = ApnsClient(
            key_pem=key.key_file.read_text(), key_id=key.key_id, team_id=key.team_id,
            topic=key.topic, host="127.0.0.1", port=args.port, ssl_context=context)
        payload = json.dumps(build_payload(push, dt.datetime.now(dt.UTC))).encode()

        def start(done: Callable[[Any], None]) -> None:
            client.start(push.token, payload, done, collapse_id=push.incident_id,
                         expiration=int(push.expires_at))

        def ok(answer: object) -> bool:
            return isinstance(answer, ApnsResponse) and answer.status == 200
    else:
        from server.settings import fcm_connections
        from workers.fcm import build_message
        from workers.gateways.fcm_client import FcmClient, FcmResponse

        client = FcmClient(
            service_account_file=str(args.certs_dir / "fcm-service-account.json"),
            project_id=DEV_FCM_PROJECT, endpoint=f"http://127.0.0.1:{args.port}",
            max_connections=fcm_connections(args.concurrency))   # as the sender's pool
        body = json.dumps({"message": build_message(push, dt.datetime.now(dt.UTC))}).encode()

        def start(done: Callable[[Any], None]) -> None:
            client.start_body(body, done)

        def ok(answer: object) -> bool:
            return isinstance(answer, FcmResponse) and answer.ok

    # connect, lift Apple's one-stream limit, fetch the token
    assert ok(await result_of(start))
    deadline = time.monotonic() + args.seconds
    started, cpu_before = time.monotonic(), time.process_time()
    done, failed = await _chained_sends(start, ok, args.concurrency, deadline)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu_before
    await client.close()
    print(json.dumps({"requests": done, "failed": failed, "seconds": seconds, "cpu_s": cpu}),
          flush=True)


async def _chained_sends(start: Callable[[Callable[[Any], None]], None],
                         ok: Callable[[object], bool], concurrency: int, deadline: float
                         ) -> tuple[int, int]:
    """``concurrency`` chains of sends by callback (the senders' own path), each answer
    starting the next send until ``deadline`` (monotonic): (answered 200, otherwise)."""
    done = failed = 0
    chains = concurrency
    over = asyncio.Event()

    def chain(answer: object) -> None:
        nonlocal done, failed, chains
        if ok(answer):
            done += 1
        else:
            failed += 1
        if time.monotonic() < deadline:
            start(chain)
            return
        chains -= 1
        if not chains:
            over.set()

    for _ in range(concurrency):
        start(chain)
    await over.wait()
    return done, failed


def run_client_only(platform: str, fleet: Fleet, services: Services, certs_dir: Path,
                    *, seconds: float, concurrency: int) -> ClientOnly:
    roots = {"fake": fleet.pids}
    before = {name: group_cpu(pids) for name, pids in roots.items()}
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_delivery", "client-only",
         "--platform", platform, "--port", str(fleet.port), "--certs-dir", str(certs_dir),
         "--seconds", str(seconds), "--concurrency", str(concurrency)],
        cwd=REPO, capture_output=True, check=False, timeout=seconds + 120)
    if out.returncode != 0:
        raise BenchError(f"the client-only run failed:\n{out.stderr.decode(errors='replace')}")
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    if result["failed"]:
        raise BenchError(f"the client-only run saw {result['failed']} failures")
    cpu = {name: cpu_used(before[name], group_cpu(pids)) for name, pids in roots.items()}
    cpu["client"] = result["cpu_s"]
    return ClientOnly(result["requests"], result["seconds"],
                      result["requests"] / result["seconds"], cpu)


# -- the whole run ----------------------------------------------------------------------


@dataclass
class PlatformResult:
    platform: str
    fake_processes: int
    ceiling: Ceiling
    sender: SenderRun
    client_only: ClientOnly | None = None
    placement: str = "shared"
    protocol: str = "HTTP/2"

    @property
    def ratio(self) -> float:
        return self.sender.rate / self.ceiling.rate if self.ceiling.rate else 0.0

    @property
    def label(self) -> str:
        return _label(self.platform, self.placement)

    def problems(self) -> list[str]:
        s = self.sender
        out = []
        if s.delivered != s.pushes or s.distinct_tokens != s.pushes:
            out.append(f"{s.delivered} deliveries to {s.distinct_tokens} devices, "
                       f"expected {s.pushes}")
        if s.outcomes != {"sent": s.pushes}:
            out.append(f"outcomes {s.outcomes}")
        if s.stream.get("pending") or s.stream.get("lag") or s.stream.get("retries"):
            out.append(f"stream {s.stream}")
        if s.exit_code != 0:
            out.append(f"sender exit code {s.exit_code}")
        return out


@dataclass(frozen=True)
class Placement:
    """Which CPUs the fake gets, and which everything driving it (h2load, or the
    sender with its PostgreSQL and Redis); None: all of them, shared."""

    name: str
    driver: frozenset[int] | None = None
    fake: frozenset[int] | None = None

    @classmethod
    def choose(cls, name: str) -> Placement:
        if name == "shared":
            return cls("shared")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise BenchError("--placement split needs at least 2 CPUs")
        half = len(cpus) // 2
        return cls("split", frozenset(cpus[:half]), frozenset(cpus[half:]))


def _place(pids: Sequence[int], cpus: frozenset[int] | None) -> None:
    pin(pids, set(cpus) if cpus is not None else os.sched_getaffinity(0))


def _label(platform: str, placement: str) -> str:
    return f"{platform}/{placement}"


def bench_platform(platform: str, args: argparse.Namespace, services: Services,
                   certs_dir: Path, tmp: Path, placement: Placement) -> PlatformResult:
    label = _label(platform, placement.name)
    _place(list(services.pids().values()), placement.driver)

    def fake() -> Fleet:
        fleet = Fleet(platform, args.fake_processes, certs_dir, tmp).start()
        _place(fleet.pids, placement.fake)
        return fleet

    fleet = fake()
    try:
        print(f"[{label}] ceiling: h2load "
              f"against {args.fake_processes} fake process(es), {args.duration} s ...",
              flush=True)
        # 16 connections x 100 streams: the highest ceiling of the shapes tried
        # (docs/BENCHMARKS.md).
        ceiling = run_h2load(platform, fleet, services, certs_dir, tmp,
                             duration=args.duration, clients=args.clients,
                             streams=args.streams, threads=args.h2load_threads,
                             cpus=placement.driver)
        print(f"[{label}] ceiling {ceiling.rate:,.0f} req/s", flush=True)
    finally:
        fleet.stop()
    alone: ClientOnly | None = None
    if args.client_seconds > 0 and placement.name == "shared":
        fleet = fake()
        try:
            print(f"[{label}] the client alone, {args.client_seconds:g} s ...", flush=True)
            alone = run_client_only(platform, fleet, services, certs_dir,
                                    seconds=args.client_seconds, concurrency=200)
            print(f"[{label}] client alone {alone.rate:,.0f} req/s", flush=True)
        finally:
            fleet.stop()
    fleet = fake()
    try:
        print(f"[{label}] one sender, {args.pushes:,} pushes ...", flush=True)
        extra = dict(e.split("=", 1) for e in args.sender_env)
        spy = (args.py_spy.with_name(f"{platform}-{placement.name}-{args.py_spy.name}")
               if args.py_spy else None)
        sender = run_sender(platform, services, fleet, certs_dir, tmp, args.pushes, extra, spy,
                            cpus=placement.driver)
        print(f"[{label}] sender {sender.rate:,.0f} pushes/s", flush=True)
    finally:
        fleet.stop()
        _place(list(services.pids().values()), None)
    return PlatformResult(platform, args.fake_processes, ceiling, sender, alone,
                          placement=placement.name, protocol="HTTP/2")


def report(results: list[PlatformResult]) -> str:
    lines = [
        f"{'':12} {'ceiling req/s':>14} {'sender push/s':>14} {'ratio':>6} "
        f"{'RSS max MB':>11} {'VmHWM MB':>9}  CPU s (sender / fake / redis / postgres)",
    ]
    for r in results:
        c = r.sender.cpu_s
        lines.append(
            f"{r.label:12} {r.ceiling.rate:14,.0f} {r.sender.rate:14,.0f} {r.ratio:6.2f} "
            f"{r.sender.rss_max_mb:11.1f} {r.sender.rss_hwm_mb:9.1f}  "
            f"{c.get('sender', 0):.1f} / {c.get('fake', 0):.1f} / {c.get('redis', 0):.1f} / "
            f"{c.get('postgres', 0):.1f} over {r.sender.seconds:.1f} s")
    for r in results:
        if r.client_only is not None:
            a = r.client_only
            lines.append(
                f"{r.platform} client alone (no Redis, PostgreSQL or sender loop): "
                f"{a.rate:,.0f} req/s = {a.rate / r.ceiling.rate:.2f} of the ceiling; CPU s "
                f"client {a.cpu_s['client']:.1f} / fake {a.cpu_s['fake']:.1f} "
                f"over {a.seconds:.1f} s")
    for r in results:
        c = r.ceiling.cpu_s
        lines.append(f"{r.label} ceiling: {r.ceiling.succeeded:,} requests in "
                     f"{r.ceiling.seconds:.1f} s; CPU s h2load {c.get('h2load', 0):.1f}, "
                     f"fake {c.get('fake', 0):.1f}")
        lines.append(f"{r.label} ceiling command: {r.ceiling.command}")
        lines.append(f"{r.label} sender settings: {r.sender.env['shown']}")
    for r in results:
        verdict = []
        verdict.append(f"ratio {r.ratio:.2f} {'>=' if r.ratio >= TARGET_RATIO else '<'} "
                       f"{TARGET_RATIO}")
        rss = max(r.sender.rss_max_mb, r.sender.rss_hwm_mb)
        verdict.append(f"RSS {rss:.0f} MB {'<' if rss < TARGET_RSS_MB else '>='} "
                       f"{TARGET_RSS_MB:.0f} MB")
        problems = r.problems()
        verdict.append("checks OK" if not problems else "PROBLEMS: " + "; ".join(problems))
        lines.append(f"{r.label}: " + ", ".join(verdict))
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_delivery",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("client-only", help="(internal) the gateway client alone")
    p.add_argument("--platform", choices=("apns", "fcm"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--certs-dir", type=Path, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=200)
    for name in ("serve-fake-apns", "serve-fake-fcm"):
        p = sub.add_parser(name, help="(internal) one fake gateway process on a shared port")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--control-port", type=int, required=True)
        p.add_argument("--certs-dir", type=Path, required=True)
        p.add_argument("--shared-token", default="", help=argparse.SUPPRESS)
        p.add_argument("--handoff-fd", type=int, required=True, help=argparse.SUPPRESS)
    parser.add_argument("--platform", choices=("apns", "fcm", "both"), default="both")
    parser.add_argument("--placement", choices=("shared", "split", "both"), default="both",
                        help="shared: everything on every CPU; split: the fake on half the "
                             "CPUs, what drives it (h2load, or the sender with PostgreSQL "
                             "and Redis) on the other half, as a gateway on other machines "
                             "would be (default: both, one after the other)")
    parser.add_argument("--pushes", type=int, default=100_000,
                        help="pushes (distinct devices) for the sender run")
    parser.add_argument("--fake-processes", type=int, default=2,
                        help="fake gateway processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--duration", type=int, default=10, help="h2load seconds (+2 warm-up)")
    parser.add_argument("--clients", type=int, default=16, help="h2load connections")
    parser.add_argument("--streams", type=int, default=100,
                        help="h2load concurrent streams per connection")
    parser.add_argument("--h2load-threads", type=int, default=1)
    parser.add_argument("--client-seconds", type=float, default=8,
                        help="seconds of the gateway client alone, between the ceiling and "
                             "the sender (0: skip)")
    parser.add_argument("--sender-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the sender, e.g. GEOPUSH_STREAM_BATCH=500")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--py-spy", type=Path, default=None,
                        help="record the sender with py-spy (.svg flamegraph, .txt raw stacks)")
    parser.add_argument("--keep-services", action="store_true",
                        help="leave the private PostgreSQL and Redis running")
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.command == "serve-fake-apns":
        serve_fake_apns(args)
        return
    if args.command == "serve-fake-fcm":
        serve_fake_fcm(args)
        return
    if args.command == "client-only":
        client_only(args)
        return
    require_tools(["h2load"])
    if args.py_spy is not None and not Path(sys.executable).with_name("py-spy").exists():
        sys.exit("bench: --py-spy needs py-spy in the venv: .venv/bin/pip install py-spy")
    WORKDIR.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so the fakes, the sender, PostgreSQL and Redis are
    # stopped rather than left running
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    services = start_services(WORKDIR, "geopush_bench_delivery")
    tmp = Path(tempfile.mkdtemp(prefix="bench-delivery-", dir=WORKDIR))
    certs_dir = tmp / "certs"
    results: list[PlatformResult] = []
    try:
        platforms = ("apns", "fcm") if args.platform == "both" else (args.platform,)
        chosen = ("shared", "split") if args.placement == "both" else (args.placement,)
        placements = [Placement.choose(name) for name in chosen]
        if "split" in chosen and not services.pids():
            print("bench: PostgreSQL and Redis given by URL are not pinned in the split "
                  "placement", file=sys.stderr)
        for platform in platforms:
            for placement in placements:
                results.append(bench_platform(platform, args, services, certs_dir, tmp,
                                              placement))
    finally:
        if not args.keep_services:
            services.stop()
    text = report(results)
    print(text)
    if args.json is not None:
        doc = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": [{**asdict(r), "ratio": r.ratio, "problems": r.problems()}
                        for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2))
    if any(r.problems() for r in results):
        sys.exit(f"bench: checks failed; the fakes' and senders' logs are in {tmp}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
