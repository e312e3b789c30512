"""Private PostgreSQL+PostGIS and Redis instances for development and tests.

``make run`` and the test suite use these when no database/Redis URL is configured,
so one command works on a fresh machine with nothing running. PostgreSQL refuses to
run as root, so when we are root the cluster is created and run as the ``postgres``
user in a directory it owns.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class DevEnvError(RuntimeError):
    pass


_PORTS = random.Random()   # seeded from the OS: processes pick independently


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' local ports."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server to listen on soon after. Picked
    below the kernel's ephemeral range: a port in that range (what binding port 0
    gives) can be taken meanwhile by any outgoing connection, and with a dozen
    processes connecting to Redis and PostgreSQL it was (a web process of the fan-out
    harness failed with "address already in use"). Below it, only another caller of
    this function could pick the same port."""
    low = _ephemeral_low()
    first = 10_000 if low > 12_000 else 1_024
    for _ in range(50):
        if low - first < 1_000:
            break
        port = _PORTS.randrange(first, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> Path:
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        versions = sorted((p for p in base.iterdir() if (p / "bin" / "initdb").exists()),
                          key=lambda p: int(p.name) if p.name.isdigit() else 0)
        if versions:
            return versions[-1] / "bin"
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise DevEnvError("PostgreSQL server binaries not found (install postgresql)")


def _as_postgres_user() -> list[str]:
    """Prefix that runs a command as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise DevEnvError("running as root but there is no 'postgres' user") from None
    return ["runuser", "-u", "postgres", "--"]


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _reachable_by_postgres(directory: Path) -> Path:
    """``directory``, or a stand-in under /var/tmp when ``postgres`` can't reach it.

    A project cloned under /root (mode 700) can't hold a cluster that the ``postgres``
    user runs; the stand-in is stable per project path so restarts find their data.
    """
    prefix = _as_postgres_user()
    if not prefix:
        return directory
    probe = directory
    while not probe.exists():
        probe = probe.parent
    ok = subprocess.run([*prefix, "test", "-x", str(probe)], check=False)  # noqa: S603
    if ok.returncode == 0:
        return directory
    digest = hashlib.sha1(str(directory).encode(), usedforsecurity=False).hexdigest()[:10]
    return Path("/var/tmp") / f"geopush-pg-{digest}"  # noqa: S108 (owned, chowned, private)


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster in ``directory``, listening on 127.0.0.1 only."""

    directory: Path
    port: int = 0

    def __post_init__(self) -> None:
        self.directory = _reachable_by_postgres(self.directory.resolve())

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "run"

    def url(self, database: str = "geopush") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*_as_postgres_user(), *args]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)  # noqa: S603

    def start(self) -> PrivatePostgres:
        bindir = _pg_bindir()
        self.directory.mkdir(parents=True, exist_ok=True)
        _chown_to_postgres(self.directory)
        self.socket_dir.mkdir(exist_ok=True)
        _chown_to_postgres(self.socket_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                      "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8")
        self.stop()  # a cluster left behind by a killed run
        if not self.port:
            self.port = free_port()
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
                # A standby can be made of it (start_standby); PostgreSQL's default too.
                f"-c wal_level=replica "
                f"-c max_connections=200 -c shared_buffers=128MB")
        res = self._run(str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-o", opts,
                        "-l", str(self.directory / "postgres.log"), "-w", "-t", "60", "start",
                        check=False)
        if res.returncode != 0:
            log_tail = (self.directory / "postgres.log").read_text()[-2000:]
            raise DevEnvError(f"pg_ctl start failed: {res.stderr}\n{log_tail}")
        return self

    def start_standby(self, directory: Path) -> PrivatePostgres:
        """A hot standby of this (running) cluster in ``directory``: a base backup
        taken with ``pg_basebackup -R`` (which writes the standby's connection to this
        primary), started on a port of its own, streaming from then on. The primary
        needs ``wal_level=replica`` (start() sets it) and a replication entry in
        ``pg_hba.conf`` (initdb's default has one for 127.0.0.1)."""
        standby = PrivatePostgres(directory)
        standby.directory.mkdir(parents=True, exist_ok=True)
        _chown_to_postgres(standby.directory)
        if not (standby.data_dir / "PG_VERSION").exists():
            res = self._run(str(_pg_bindir() / "pg_basebackup"), "-D", str(standby.data_dir),
                            "-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1",
                            "-p", str(self.port), "-U", "postgres", check=False)
            if res.returncode != 0:
                raise DevEnvError(f"pg_basebackup failed: {res.stderr}")
        return standby.start()

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"bad database name {name!r}")
        psql = shutil.which("psql") or str(_pg_bindir() / "psql")
        exists = subprocess.run(  # noqa: S603
            [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAc",
             f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608 (name checked)
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run(  # noqa: S603
                [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c",
                 f'CREATE DATABASE "{name}"'],
                check=True, capture_output=True, text=True,
            )
        return self.url(name)

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run(str(_pg_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                      "-w", "stop", check=False)


@dataclass
class PrivateRedis:
    """A Redis server in ``directory`` on 127.0.0.1, nothing persisted."""

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # More redis-server options, e.g. a cluster node's.
    options: tuple[str, ...] = ()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if not binary:
            raise DevEnvError("redis-server not found (install redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.process = subprocess.Popen(  # noqa: S603
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log"), *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # Its own session: a terminal's Ctrl-C must not stop Redis before the
            # workers using it have drained; stop() ends it afterwards.
            start_new_session=True,
        )
        wait_for_port(self.port, timeout=10)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: no shutdown, nothing flushed."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class PrivateRedisCluster:
    """A Redis Cluster on 127.0.0.1: ``masters`` nodes sharing the 16,384 slots, each
    with ``replicas`` replicas, nothing persisted. Its URL names one master: any node
    is enough for a cluster client to find the others."""

    directory: Path
    masters: int = 3
    replicas: int = 0
    # How long a node may be unreachable before the others fail it over (ms): short,
    # so a failover test needs seconds, not Redis's default 15.
    node_timeout_ms: int = 1000
    # The first node's port (the URL's), when it must be known before the start.
    first_port: int = 0
    nodes: list[PrivateRedis] = field(default_factory=list)

    def url(self) -> str:
        return self.nodes[0].url()

    def start(self) -> PrivateRedisCluster:
        cli = shutil.which("redis-cli")
        if not cli:
            raise DevEnvError("redis-cli not found (install redis-tools)")
        if self.masters < 3:
            raise ValueError("a Redis Cluster needs at least three masters")
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(self.masters * (1 + self.replicas)):
                node_dir = self.directory / f"node{i}"
                options = (
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    # The bus port is the client port + 10000 unless set: a free one.
                    "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    # A replica may always take over, however long its master was gone.
                    "--cluster-replica-validity-factor", "0",
                )
                port = self.first_port if i == 0 else 0
                self.nodes.append(PrivateRedis(node_dir, port=port, options=options))
                self.nodes[-1].start()
            res = subprocess.run(  # noqa: S603
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, check=False, timeout=60,
            )
            if res.returncode != 0:
                raise DevEnvError(f"redis-cli --cluster create failed: {res.stdout}{res.stderr}")
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def info(self, node: PrivateRedis, section: str) -> dict[str, str]:
        """``INFO section`` (or ``CLUSTER INFO`` for "cluster-info") of one node."""
        cli = shutil.which("redis-cli") or "redis-cli"
        args = ["cluster", "info"] if section == "cluster-info" else ["info", section]
        out = subprocess.run(  # noqa: S603
            [cli, "-p", str(node.port), *args], capture_output=True, text=True,
            check=False, timeout=10,
        ).stdout
        return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and every live replica has
        its master's data (``master_link_status:up``)."""
        deadline = time.monotonic() + timeout
        while True:
            live = [n for n in self.nodes if n.process is not None]
            states = [self.info(n, "cluster-info").get("cluster_state") for n in live]
            links = [r.get("master_link_status", "up") for r in
                     (self.info(n, "replication") for n in live) if r.get("role") == "slave"]
            if all(s == "ok" for s in states) and all(link == "up" for link in links):
                return
            if time.monotonic() > deadline:
                raise DevEnvError(f"Redis Cluster not ready after {timeout}s: {states} {links}")
            time.sleep(0.1)

    def role(self, node: PrivateRedis) -> str:
        """``master`` or ``slave``, as the node says now."""
        return self.info(node, "replication").get("role", "")

    def replicas_of(self, master: PrivateRedis) -> list[PrivateRedis]:
        """The live nodes replicating ``master`` now."""
        return [n for n in self.nodes if n.process is not None and n is not master
                and self.info(n, "replication").get("master_port") == str(master.port)]

    def wait_for_failover(self, replicas: list[PrivateRedis], timeout: float = 30.0) -> None:
        """Until one of ``replicas`` (of a master that died) is a master, and the
        cluster is whole again."""
        deadline = time.monotonic() + timeout
        while not any(self.role(r) == "master" for r in replicas):
            if time.monotonic() > deadline:
                raise DevEnvError(f"no replica took over within {timeout}s")
            time.sleep(0.1)
        self.wait_until_ok(max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise DevEnvError(f"nothing listening on {host}:{port} after {timeout}s")
        time.sleep(0.05)
