"""The ceiling: h2load against the fake, with requests like the sender's (same headers
and payload, a valid provider token or OAuth bearer token)."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec

from loadtest.bench_common import (
    BenchError,
    Services,
    proc_cpu,
)
from loadtest.delivery import PUBLIC_LOCATION
from loadtest.delivery.fleet import Fleet
from loadtest.delivery.procstats import cpu_used, group_cpu, place
from loadtest.delivery.tokens import apns_jwt, fcm_access_token
from server.dev.devkeys import DEV_FCM_PROJECT
from workers.apns import build_payload
from workers.fcm import build_message
from workers.push import Push


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


def sample_request(platform: str, certs_dir: Path, fleet: Fleet, tmp: Path,
                   apns_token: str | None = None) -> tuple[str, list[str], Path]:
    """URL, headers and body file of a request like the sender's; ``apns_token``: the
    provider token to send (by default a new one: the fake APNs takes a new one only
    20 minutes after the last, so a ceiling run beside senders passes theirs)."""

    now = time.time()
    push = Push(
        incident_id=str(uuid.uuid4()), device_id=str(uuid.uuid4()), platform=platform,
        token="", locale="en", category="structure_fire", public_location=PUBLIC_LOCATION,
        lat=47.667, lon=-122.302, occurred_at=now - 120, received_at=now,
        expires_at=now + 3600)
    body = tmp / f"{platform}-body.json"
    if platform == "apns":

        token = "0123456789abcdef" * 4
        body.write_text(json.dumps(build_payload(push, dt.datetime.now(dt.UTC))))
        headers = [
            f"authorization: bearer {apns_token or apns_jwt(certs_dir)}",
            f"apns-id: {uuid.uuid4()}", "apns-topic: org.geopush.app",
            f"apns-collapse-id: {push.incident_id}", f"apns-expiration: {int(now + 3600)}",
            "apns-priority: 10", "apns-push-type: alert",
        ]
        return f"https://127.0.0.1:{fleet.port}/3/device/{token}", headers, body

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
               cpus: frozenset[int] | None = None, requests: int | None = None,
               apns_token: str | None = None) -> Ceiling:
    """``duration`` seconds after a 2 s warm-up; or, with ``requests``, that many
    requests and no warm-up (the time to push a fan-out's count)."""
    url, headers, body = sample_request(platform, certs_dir, fleet, tmp, apns_token)
    length = ["-D", str(duration), "--warm-up-time", "2"] if requests is None \
        else ["-n", str(requests)]
    cmd = ["h2load", *length, "-c", str(clients),
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
    place([proc.pid], cpus)
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
