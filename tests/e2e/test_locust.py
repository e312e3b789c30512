"""A short headless Locust run of every user class against the whole stack (web,
workers, fake gateways), with the load-test agency `geopush loadtest setup` makes."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path

import pytest

from server.dev.loadtest import setup
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Stack

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_headless_locust_run_has_no_failures_and_reports_push_latency(
    stack: Stack, tmp_path: Path
) -> None:
    base = str(stack.client.make_url("")).rstrip("/")
    fakes = {"apns": f"http://127.0.0.1:{stack.apns.control_port}", "fcm": stack.fcm.url}
    state_file = tmp_path / "loadtest.json"
    # The setup speaks plain blocking HTTP to the app this event loop serves: a thread.
    state = await asyncio.to_thread(setup, state_file, base, ADMIN_TOKEN, devices=60,
                                    fakes=fakes)
    assert (await asyncio.to_thread(setup, state_file, base, ADMIN_TOKEN, fakes=fakes)) \
        == state, "a state that matches the database is reused"

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(REPO / "loadtest/locustfile.py"),
        "--headless", "-u", "8", "-r", "8", "-t", "8s", "--host", base,
        "--state", str(state_file), "--admin-token", ADMIN_TOKEN,
        "--csv", str(tmp_path / "run"), "--only-summary", "--exit-code-on-error", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore",
                           "PYTHONPATH": str(REPO)},
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text

    with (tmp_path / "run_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    total = rows[("", "Aggregated")]
    assert int(total["Failure Count"]) == 0, text
    webhook = "/v1/agencies/[agency]/incidents"
    for fmt in ("native", "cap", "eido"):
        assert int(rows[("POST", f"{webhook} [{fmt} new]")]["Request Count"]) > 0, text
    assert ("POST", "/v1/devices") in rows and ("GET", "/v1/devices/[device]/alerts") in rows
    # The end-to-end figure sits in Locust's table beside the HTTP latencies.
    pushes = [r for (kind, _), r in rows.items() if kind == "PUSH"]
    assert pushes and sum(int(r["Request Count"]) for r in pushes) > 0, text
    assert {name for (kind, name) in rows if kind == "PUSH"} <= {"webhook -> apns",
                                                                 "webhook -> fcm"}
    new = sum(int(rows[("POST", f"{webhook} [{fmt} new]")]["Request Count"])
              for fmt in ("native", "cap", "eido"))
    # Requests cut off when the run ended may be stored without being counted: >=.
    assert await stack.pool.fetchval("SELECT count(*) FROM incidents") >= new
