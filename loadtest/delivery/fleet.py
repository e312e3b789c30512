"""The fake gateway as a fleet of processes behind one listening socket held here, which
hands each new connection to the next process in turn (SCM_RIGHTS), so the load is
even however few connections a client opens; and the processes themselves (``serve-
fake-apns`` / ``serve-fake-fcm``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from loadtest import fake_fcm
from loadtest.bench_common import (
    BenchError,
    http_json,
    stop_process,
)
from loadtest.delivery import REPO
from loadtest.delivery.tokens import fcm_access_token
from loadtest.fake_apns import FakeApns, _ApnsConnection
from loadtest.fake_fcm import FakeFcm
from loadtest.h2server import remember_huffman_strings
from server.dev.devenv import free_port
from server.dev.devkeys import (
    DEV_FCM_PROJECT,
    ensure_apns_key,
    ensure_fcm_service_account,
    ensure_tls,
    public_key_pem,
)


def serve_fake_apns(args: argparse.Namespace) -> None:
    """One fake APNs process of a fleet: ``loadtest.fake_apns.FakeApns`` unchanged, but
    its connections are handed over by the fleet (``_take_connections``) instead of
    accepted on a port of its own; its control API has a port of its own."""

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
