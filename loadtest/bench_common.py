"""Pieces shared by the ``loadtest/bench_*`` benchmarks.

- checking that the measuring tools are installed (and naming their Debian package);
- driving ``wrk`` with ``loadtest/wrk/replay.lua``, which replays pre-generated raw
  requests so the load generator does no crypto or JSON work of its own;
- CPU accounting from ``/proc`` (who used the two cores during a phase);
- a hello-world aiohttp server run with the same loop and access-log settings as
  ``geopush serve``: the framework's ceiling, measured side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.dev.devenv import PrivatePostgres, PrivateRedis

LOADTEST = Path(__file__).resolve().parent
REPO = LOADTEST.parent
REPLAY_LUA = LOADTEST / "wrk" / "replay.lua"

# tool -> Debian package that provides it
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client", "pg_ctl": "postgresql postgis",
         "redis-server": "redis-server"}


class BenchError(RuntimeError):
    pass


# -- services -------------------------------------------------------------------------


@dataclass
class Services:
    """PostgreSQL and Redis for one benchmark run (private ones are stopped after)."""

    database_url: str
    redis_url: str
    postgres: PrivatePostgres | None = None
    redis: PrivateRedis | None = None

    def pids(self) -> dict[str, int]:
        """The postmaster's and redis-server's pids, for CPU accounting."""
        out: dict[str, int] = {}
        if self.postgres is not None:
            pidfile = self.postgres.data_dir / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError):
                out["postgres"] = int(pidfile.read_text().split("\n", 1)[0])
        if self.redis is not None and self.redis.process is not None:
            out["redis"] = int(self.redis.process.pid)
        return out

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()


def start_services(workdir: Path, database: str) -> Services:
    """GEOPUSH_DATABASE_URL and GEOPUSH_REDIS_URL if both are set; otherwise private
    instances under ``workdir`` with a fresh ``database`` each run (so runs compare)."""
    db_url = os.environ.get("GEOPUSH_DATABASE_URL", "")
    redis_url = os.environ.get("GEOPUSH_REDIS_URL", "")
    if db_url and redis_url:
        return Services(db_url, redis_url)
    if db_url or redis_url:
        sys.exit("bench: set both GEOPUSH_DATABASE_URL and GEOPUSH_REDIS_URL, or neither")
    require_tools(["pg_ctl", "redis-server"])
    pg = PrivatePostgres(workdir / "postgres").start()
    subprocess.run(
        [shutil.which("psql") or "psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U",
         "postgres", "-d", "postgres", "-c", f'DROP DATABASE IF EXISTS "{database}"'],
        check=True, capture_output=True,
    )
    redis = PrivateRedis(workdir / "redis").start()
    return Services(pg.create_database(database), redis.url(), pg, redis)


def require_tools(names: Sequence[str]) -> None:
    """Exit with the apt-get line to run when a tool is missing."""
    missing = [n for n in names if not _which(n)]
    if missing:
        pkgs = " ".join(dict.fromkeys(TOOLS.get(n, n) for n in missing))
        sys.exit(f"bench: missing {', '.join(missing)}; install with: apt-get install -y {pkgs}")


def _which(name: str) -> str | None:
    if name == "pg_ctl":
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        return str(found[-1]) if found else shutil.which(name)
    return shutil.which(name)


# -- requests -------------------------------------------------------------------------


def raw_post(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def write_requests(prefix: Path, requests: Iterable[bytes], threads: int) -> int:
    """Deal raw requests round-robin into ``prefix.1`` .. ``prefix.<threads>``."""
    files = [open(f"{prefix}.{n}", "wb") for n in range(1, threads + 1)]  # noqa: SIM115
    count = 0
    try:
        for count, req in enumerate(requests, start=1):
            f = files[count % threads]
            f.write(b"%d\n" % len(req))
            f.write(req)
    finally:
        for f in files:
            f.close()
    return count


# -- wrk ------------------------------------------------------------------------------


@dataclass
class WrkResult:
    seconds: float
    requests: int
    sent: int
    wraps: int
    duplicates: int
    errors: dict[str, int]
    latency_ms: dict[str, float]
    statuses: dict[int, int]
    incident_ids: list[str]
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")


def run_wrk(
    url: str, requests_prefix: Path, *, duration: float, connections: int, threads: int,
    result_path: Path, collect: bool = False, timeout_s: int = 10,
) -> WrkResult:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
           f"--timeout={timeout_s}s", "--latency", "-s", str(REPLAY_LUA), url,
           "--", str(requests_prefix), str(result_path), "collect" if collect else "-"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not result_path.exists():
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    data: dict[str, Any] = json.loads(result_path.read_text())
    result_path.unlink()
    lat = data["latency_us"]
    return WrkResult(
        seconds=data["duration_us"] / 1e6,
        requests=int(data["requests"]),
        sent=int(data["sent"]),
        wraps=int(data["wraps"]),
        duplicates=int(data["duplicates"]),
        errors={k: int(v) for k, v in data["errors"].items()},
        latency_ms={k: float(v) / 1000 for k, v in lat.items()},
        statuses={int(k): int(v) for k, v in data["statuses"].items()},
        incident_ids=list(data["incident_ids"]),
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )


# -- CPU accounting -------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User+system seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


# -- CPU placement ----------------------------------------------------------------------


def pin(roots: Sequence[int], cpus: set[int]) -> None:
    """Every thread of ``roots`` and of the processes below them onto ``cpus`` (threads
    and processes they start later inherit it)."""
    for pid in {p for root in roots for p in descendants(root)}:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):   # gone meanwhile
                os.sched_setaffinity(int(task.name), cpus)


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (for PostgreSQL: the postmaster's backends)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return float(sum(vals) - idle), float(sum(vals))


@dataclass
class CpuMeter:
    """CPU seconds used by named process groups between ``start()`` and ``stop()``."""

    groups: dict[str, int]  # name -> root pid (its descendants count too)
    used: dict[str, float] = field(default_factory=dict)
    machine_busy_fraction: float = 0.0
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: {pid: proc_cpu(pid) for pid in descendants(root)}
                for name, root in self.groups.items()}

    def start(self) -> None:
        self._start = self._sample()
        self._machine = machine_busy()

    def stop(self) -> None:
        end = self._sample()
        busy, total = machine_busy()
        self.machine_busy_fraction = (busy - self._machine[0]) / max(1.0, total - self._machine[1])
        for name, pids in end.items():
            before = self._start.get(name, {})
            self.used[name] = sum(cpu - before.get(pid, 0.0) for pid, cpu in pids.items())


# -- processes ------------------------------------------------------------------------


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
              ) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (local URL)
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; the exit code (None: no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- the ceiling ----------------------------------------------------------------------

HELLO_BODY = (b'{"incident_id":"00000000-0000-0000-0000-000000000000",'
              b'"decision":"hello","duplicate":false}')


def serve_hello(host: str, port: int) -> None:
    """The framework's ceiling: read the body, answer 202 with a small JSON document.

    Same settings as ``geopush serve`` (uvloop, no access log, the same logging set-up),
    same route shape, same request bytes; only the application work is missing.
    """
    from aiohttp import web

    from server.logs import configure_logging

    configure_logging("INFO")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def incidents(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=HELLO_BODY, status=202, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/agencies/{agency}/incidents", incidents)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=host, port=port, print=None, access_log=None)


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
