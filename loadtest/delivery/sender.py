"""ONE sender process (``geopush worker apns|fcm``) against the fake: pushes per second
from the first to the last delivery, its memory sampled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.bench_common import (
    BenchError,
    Services,
    proc_cpu,
    stop_process,
    wait_until,
)
from loadtest.delivery import REPO, STALL_TIMEOUT_S
from loadtest.delivery.fleet import Fleet
from loadtest.delivery.procstats import cpu_used, group_cpu, place, proc_status_kb
from loadtest.delivery.seeding import enqueue, make_pushes, outcomes_of, seed_fanout, stream_state
from server.dev.devkeys import DEV_FCM_PROJECT, ensure_apns_key, ensure_tls


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
    place([sender.pid], cpus)
    log.close()
    spy: subprocess.Popen[bytes] | None = None
    if py_spy is not None:
        spy = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
             str(sender.pid), "--rate", "200", "--native", "--format",
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
        outcomes=asyncio.run(outcomes_of(services.database_url, incident_id)),
        stream=stream_state(services.redis_url, platform), cpu_s=cpu, env={"shown": shown},
    )
