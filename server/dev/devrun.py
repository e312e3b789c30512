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
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

from honcho.environ import parse_procfile
from honcho.manager import Manager

from server.dev import demo
from server.dev.devenv import PrivatePostgres, PrivateRedis
from server.dev.devkeys import (
    DEV_FCM_PROJECT,
    ensure_apns_key,
    ensure_fcm_service_account,
    ensure_tls,
)
from server.store.migrate import migrate

FAKE_APNS_PORT, FAKE_APNS_CONTROL_PORT, FAKE_FCM_PORT = 8443, 8444, 8445


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


def _announce_demo(env: dict[str, str], state: Path) -> None:
    port = env["GEOPUSH_HTTP_PORT"]
    if not _wait_ready(f"http://127.0.0.1:{port}/readyz"):
        print("geopush dev: the server did not become ready; see the web lines above",
              file=sys.stderr)
        return
    for port_ in (FAKE_APNS_CONTROL_PORT, FAKE_FCM_PORT):
        _wait_ready(f"http://127.0.0.1:{port_}/_fake/deliveries")
    try:
        info = demo.load(state / "demo.json", f"http://127.0.0.1:{port}",
                         env["GEOPUSH_ADMIN_TOKEN"])
    except Exception as exc:  # the demo is a convenience; the server keeps running
        print(f"geopush dev: loading the demo failed: {exc}", file=sys.stderr)
        return
    devices = "\n".join(
        f"    {d['name']:<22} {d['platform']}  id {d['id']}" for d in info["devices"])
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
    curl -s http://127.0.0.1:{FAKE_APNS_CONTROL_PORT}/_fake/deliveries
    curl -s http://127.0.0.1:{FAKE_FCM_PORT}/_fake/deliveries
 Admin token (GEOPUSH_ADMIN_TOKEN): {state / 'admin-token'}
================================================================================
""", flush=True)


def run(project: Path) -> int:
    state = project / ".geopush"
    state.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()}
    env.setdefault("GEOPUSH_HTTP_PORT", "8080")
    busy = [p for p in (int(env["GEOPUSH_HTTP_PORT"]), FAKE_APNS_PORT, FAKE_APNS_CONTROL_PORT,
                        FAKE_FCM_PORT) if _port_in_use(p)]
    if busy:
        print(f"geopush dev: port(s) {busy} already in use (another `make run`?)",
              file=sys.stderr)
        return 1
    pg: PrivatePostgres | None = None
    rd: PrivateRedis | None = None
    try:
        if not env.get("GEOPUSH_DATABASE_URL"):
            print("geopush dev: starting private PostgreSQL+PostGIS under .geopush/postgres")
            pg = PrivatePostgres(state / "postgres").start()
            env["GEOPUSH_DATABASE_URL"] = pg.create_database("geopush")
        if not env.get("GEOPUSH_REDIS_URL"):
            print("geopush dev: starting private Redis under .geopush/redis")
            rd = PrivateRedis(state / "redis").start()
            env["GEOPUSH_REDIS_URL"] = rd.url()
        asyncio.run(migrate(env["GEOPUSH_DATABASE_URL"]))

        certs = state / "certs"
        tls = ensure_tls(certs)
        apns_key = ensure_apns_key(certs)
        service_account = ensure_fcm_service_account(
            certs, f"http://127.0.0.1:{FAKE_FCM_PORT}/token")
        env.setdefault("GEOPUSH_ADMIN_TOKEN", _admin_token(state))
        env.update({
            "GEOPUSH_APNS_KEY_FILE": str(apns_key.key_file),
            "GEOPUSH_APNS_KEY_ID": apns_key.key_id,
            "GEOPUSH_APNS_TEAM_ID": apns_key.team_id,
            "GEOPUSH_APNS_TOPIC": apns_key.topic,
            "GEOPUSH_APNS_HOST": "127.0.0.1",
            "GEOPUSH_APNS_PORT": str(FAKE_APNS_PORT),
            "GEOPUSH_APNS_CA_FILE": str(tls.ca_cert),
            "GEOPUSH_FCM_SERVICE_ACCOUNT_FILE": str(service_account),
            "GEOPUSH_FCM_PROJECT": DEV_FCM_PROJECT,
            "GEOPUSH_FCM_ENDPOINT": f"http://127.0.0.1:{FAKE_FCM_PORT}",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        })
        manager = Manager()
        procfile = parse_procfile((project / "Procfile").read_text())
        for name, cmd in procfile.processes.items():
            manager.add_process(name, cmd, env=env, cwd=str(project))
        threading.Thread(target=_announce_demo, args=(env, state), daemon=True).start()
        manager.loop()
        return int(manager.returncode or 0)
    finally:
        if rd:
            rd.stop()
        if pg:
            pg.stop()
        print("geopush dev: stopped", flush=True)


