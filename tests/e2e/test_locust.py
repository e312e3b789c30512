"""A short headless Locust run of loadtest/locustfile.py against a real server."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, web

from server.dev.devenv import free_port
from server.settings import Settings
from server.web.app import create_app
from tests.conftest import ADMIN_TOKEN
from tests.helpers import SEATTLE_CALL_TYPES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def server_url(
    settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis
) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.slow
async def test_headless_locust_run_has_no_failures(
    server_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with ClientSession() as http:
        resp = await http.post(
            f"{server_url}/v1/admin/agencies",
            json={"id": "load", "name": "Load test", "timezone": "UTC",
                  "call_types": SEATTLE_CALL_TYPES},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert resp.status == 201
        secret = (await resp.json())["secret"]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(REPO / "loadtest/locustfile.py"),
        "--headless", "-u", "5", "-r", "5", "-t", "4s", "--host", server_url,
        "--agency", "load", "--agency-secret", secret, "--csv", str(tmp_path / "run"),
        "--only-summary", "--exit-code-on-error", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text

    with (tmp_path / "run_stats.csv").open() as f:
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 10, text
    assert int(total["Failure Count"]) == 0, text
    # Every request answered 202 stored an incident (requests cut off when the run
    # ended may be stored without being counted, hence >=).
    assert await pool.fetchval("SELECT count(*) FROM incidents") >= int(total["Request Count"])
