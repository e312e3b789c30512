"""One platform's run: the ceiling, the client alone and the sender, per CPU placement."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench_common import (
    BenchError,
    Services,
)
from loadtest.delivery.client import ClientOnly, run_client_only
from loadtest.delivery.fleet import Fleet
from loadtest.delivery.h2load import Ceiling, run_h2load
from loadtest.delivery.procstats import place
from loadtest.delivery.sender import SenderRun, run_sender


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


def _label(platform: str, placement: str) -> str:
    return f"{platform}/{placement}"


def bench_platform(platform: str, args: argparse.Namespace, services: Services,
                   certs_dir: Path, tmp: Path, placement: Placement) -> PlatformResult:
    label = _label(platform, placement.name)
    place(list(services.pids().values()), placement.driver)

    def fake() -> Fleet:
        fleet = Fleet(platform, args.fake_processes, certs_dir, tmp).start()
        place(fleet.pids, placement.fake)
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
        place(list(services.pids().values()), None)
    return PlatformResult(platform, args.fake_processes, ceiling, sender, alone,
                          placement=placement.name, protocol="HTTP/2")
