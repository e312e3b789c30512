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
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.bench_common import (
    require_tools,
    start_services,
)
from loadtest.delivery import TARGET_RATIO, TARGET_RSS_MB, WORKDIR
from loadtest.delivery.client import client_only
from loadtest.delivery.fleet import serve_fake_apns, serve_fake_fcm
from loadtest.delivery.scenarios import Placement, PlatformResult, bench_platform


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
