"""``make run``: everything on one machine, in the foreground, stopped by Ctrl-C.

Starts private PostgreSQL+PostGIS and Redis under ``.geopush/`` unless
GEOPUSH_DATABASE_URL / GEOPUSH_REDIS_URL are set, makes development keys for the fake
gateways, migrates, runs the Procfile's processes with honcho, loads the demo, and
prints how to post an incident. On exit every process and private service stops.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

from honcho.environ import parse_procfile
from honcho.manager import Manager

from server.dev import demo
from server.dev.devenv import PrivatePostgres, PrivateRedis, PrivateRedisCluster
from server.dev.devkeys import (
    DEV_FCM_PROJECT,
    ensure_apns_key,
    ensure_fcm_service_account,
    ensure_tls,
)
from server.dev.loadtest import AGENCY as LOADTEST_AGENCY
from server.dev.loadtest import setup as loadtest_setup
from server.store.migrate import migrate

# Every port `make run` listens on; GEOPUSH_DEV_PORT_OFFSET=N adds N to each (a second
# stack beside the first, e.g. for a benchmark).
PORTS = {"web": 8080, "fake_apns": 8443, "fake_apns_control": 8444, "fake_fcm": 8445,
         "matcher": 9101, "apns": 9102, "fcm": 9103, "relay": 9104}
WORKER_METRICS = ("matcher", "apns", "fcm", "relay")


def dev_ports(env: dict[str, str]) -> dict[str, int]:
    offset = int(env.get("GEOPUSH_DEV_PORT_OFFSET") or 0)
    ports = {name: port + offset for name, port in PORTS.items()}
    if env.get("GEOPUSH_HTTP_PORT"):
        ports["web"] = int(env["GEOPUSH_HTTP_PORT"])
    return ports


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _admin_token(state: Path) -> str:
    path = state / "admin-token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_ready(url: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (local URL)
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _announce_demo(env: dict[str, str], state: Path, ports: dict[str, int]) -> None:
    port = ports["web"]
    base = f"http://127.0.0.1:{port}"
    if not _wait_ready(f"{base}/readyz"):
        print("geopush dev: the server did not become ready; see the web lines above",
              file=sys.stderr)
        return
    fakes = {"apns": f"http://127.0.0.1:{ports['fake_apns_control']}",
             "fcm": f"http://127.0.0.1:{ports['fake_fcm']}"}
    for url in fakes.values():
        _wait_ready(f"{url}/_fake/deliveries")
    try:
        info = demo.load(state / "demo.json", base, env["GEOPUSH_ADMIN_TOKEN"], fakes)
        loadtest_setup(state / "loadtest.json", base, env["GEOPUSH_ADMIN_TOKEN"], fakes=fakes)
    except Exception as exc:  # the demo is a convenience; the server keeps running
        print(f"geopush dev: loading the demo failed: {exc}", file=sys.stderr)
        return
    devices = "\n".join(
        f"    {d['name']:<22} {d['platform']}  id {d['id']}" for d in info["devices"])
    metrics = "  ".join(f"{kind} :{ports[kind]}" for kind in WORKER_METRICS)
    console = (f"username {info['console']['username']}, password in {state / 'demo.json'}"
               if "console" in info else "create an account: geopush user create --help")
    print(f"""
================================================================================
 geopush is running on http://127.0.0.1:{port}   (Ctrl-C stops everything)

 Demo agency {info['agency']!r}, secret and device credentials in {state / 'demo.json'}
{devices}

 Post a signed incident and see who got a push (in another terminal):
    .venv/bin/geopush demo incident
    .venv/bin/geopush demo incident --call-type "Aid Response"   # not alerted

 Editor console: http://127.0.0.1:{port}/console/   public map: http://127.0.0.1:{port}/map/
    {console}

 What the fake gateways received:
    curl -s {fakes['apns']}/_fake/deliveries
    curl -s {fakes['fcm']}/_fake/deliveries
 Admin token (GEOPUSH_ADMIN_TOKEN): {state / 'admin-token'}

 Prometheus metrics: web {base}/metrics; workers' /metrics on {metrics}
 Transparency report: {base}/transparency/{info['agency']}
 Load test (agency {LOADTEST_AGENCY!r}, state in {state / 'loadtest.json'}):
    .venv/bin/locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 60s --host {base}
================================================================================
""", flush=True)


def run(project: Path) -> int:
    state = project / ".geopush"
    state.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()}
    ports = dev_ports(env)
    env["GEOPUSH_HTTP_PORT"] = str(ports["web"])
    busy = [p for p in ports.values() if _port_in_use(p)]
    if busy:
        print(f"geopush dev: port(s) {busy} already in use (another `make run`?)",
              file=sys.stderr)
        return 1
    pg: PrivatePostgres | None = None
    rd: PrivateRedis | PrivateRedisCluster | None = None
    try:
        if not env.get("GEOPUSH_DATABASE_URL"):
            print("geopush dev: starting private PostgreSQL+PostGIS under .geopush/postgres")
            pg = PrivatePostgres(state / "postgres").start()
            env["GEOPUSH_DATABASE_URL"] = pg.create_database("geopush")
        if not env.get("GEOPUSH_REDIS_URL") and env.get("GEOPUSH_DEV_REDIS_CLUSTER") == "1":
            print("geopush dev: starting a private 3-master Redis Cluster under "
                  ".geopush/redis-cluster")
            # Nothing is persisted: a cluster of new nodes on new ports each time.
            shutil.rmtree(state / "redis-cluster", ignore_errors=True)
            rd = PrivateRedisCluster(state / "redis-cluster", masters=3).start()
            env["GEOPUSH_REDIS_URL"] = rd.url()
        elif not env.get("GEOPUSH_REDIS_URL"):
            print("geopush dev: starting private Redis under .geopush/redis")
            rd = PrivateRedis(state / "redis").start()
            env["GEOPUSH_REDIS_URL"] = rd.url()
        asyncio.run(migrate(env["GEOPUSH_DATABASE_URL"]))

        certs = state / "certs"
        tls = ensure_tls(certs)
        apns_key = ensure_apns_key(certs)
        service_account = ensure_fcm_service_account(
            certs, f"http://127.0.0.1:{ports['fake_fcm']}/token")
        env.setdefault("GEOPUSH_ADMIN_TOKEN", _admin_token(state))
        # Every phone of the demo and of the load test (geopush loadtest setup's 200,
        # Locust's phone users) registers from 127.0.0.1: the per-address limit made
        # for the internet would refuse the load test its phones.
        env.setdefault("GEOPUSH_DEVICE_REGISTRATIONS_PER_HOUR_PER_IP", "1000000")
        env.update({
            "GEOPUSH_APNS_KEY_FILE": str(apns_key.key_file),
            "GEOPUSH_APNS_KEY_ID": apns_key.key_id,
            "GEOPUSH_APNS_TEAM_ID": apns_key.team_id,
            "GEOPUSH_APNS_TOPIC": apns_key.topic,
            "GEOPUSH_APNS_HOST": "127.0.0.1",
            "GEOPUSH_APNS_PORT": str(ports["fake_apns"]),
            "GEOPUSH_APNS_CA_FILE": str(tls.ca_cert),
            "GEOPUSH_FCM_SERVICE_ACCOUNT_FILE": str(service_account),
            "GEOPUSH_FCM_PROJECT": DEV_FCM_PROJECT,
            "GEOPUSH_FCM_ENDPOINT": f"http://127.0.0.1:{ports['fake_fcm']}",
            # The Procfile's fakes listen where the senders are pointed.
            "FAKE_APNS_PORT": str(ports["fake_apns"]),
            "FAKE_APNS_CONTROL_PORT": str(ports["fake_apns_control"]),
            "FAKE_FCM_PORT": str(ports["fake_fcm"]),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        })
        manager = Manager()
        procfile = parse_procfile((project / "Procfile").read_text())
        for name, cmd in procfile.processes.items():
            # Each worker serves /metrics on a port of its own.
            own = {"GEOPUSH_METRICS_PORT": str(ports[name])} if name in WORKER_METRICS else {}
            manager.add_process(name, cmd, env={**env, **own}, cwd=str(project))
        threading.Thread(target=_announce_demo, args=(env, state, ports), daemon=True).start()
        manager.loop()
        return int(manager.returncode or 0)
    finally:
        if rd:
            rd.stop()
        if pg:
            pg.stop()
        print("geopush dev: stopped", flush=True)


