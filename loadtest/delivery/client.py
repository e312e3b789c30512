"""The gateway client alone (no Redis, PostgreSQL or sender loop): what any sender built
on it could reach at best."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from loadtest.bench_common import (
    BenchError,
    Services,
)
from loadtest.delivery import PUBLIC_LOCATION, REPO
from loadtest.delivery.fleet import Fleet
from loadtest.delivery.procstats import cpu_used, group_cpu
from server.dev.devkeys import DEV_FCM_PROJECT, ensure_apns_key, ensure_tls
from server.settings import fcm_connections
from workers.apns import build_payload
from workers.fcm import build_message
from workers.gateways.apns_client import ApnsClient, ApnsResponse
from workers.gateways.fcm_client import FcmClient, FcmResponse
from workers.gateways.waiting import result_of
from workers.push import Push


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

    uvloop.run(_client_only(args))


async def _client_only(args: argparse.Namespace) -> None:
    now = time.time()
    push = Push(
        incident_id=str(uuid.uuid4()), device_id=str(uuid.uuid4()), platform=args.platform,
        token="0123456789abcdef" * 4, locale="en", category="structure_fire",
        public_location=PUBLIC_LOCATION, lat=47.667, lon=-122.302, occurred_at=now - 120,
        received_at=now, expires_at=now + 3600)
    start: Callable[[Callable[[Any], None]], None]
    if args.platform == "apns":

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
