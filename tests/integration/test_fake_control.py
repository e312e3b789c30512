"""Both fakes serve one control API (loadtest.fake_control): the same routes, defaults,
answers and refusals, so a test or a load test drives either the same way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from loadtest.fake_apns import FakeApns
from loadtest.fake_fcm import FakeFcm
from server.dev.devkeys import (
    DEV_APNS_KEY_ID,
    DEV_APNS_TEAM_ID,
    DEV_APNS_TOPIC,
    ensure_apns_key,
    ensure_tls,
    public_key_pem,
)


@pytest.fixture(params=["apns", "fcm"])
async def control(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The base URL of a fake's control API."""
    if request.param == "apns":
        key = ensure_apns_key(tmp_path)
        apns = FakeApns(tls=ensure_tls(tmp_path),
                        provider_keys={DEV_APNS_KEY_ID: public_key_pem(key.key_file.read_bytes())},
                        team_id=DEV_APNS_TEAM_ID, topic=DEV_APNS_TOPIC)
        await apns.start(port=0, control_port=0)
        try:
            yield f"http://127.0.0.1:{apns.control_port}/_fake"
        finally:
            await apns.stop()
    else:
        fcm = FakeFcm(project_id="p", service_account_public_keys={})
        await fcm.start(port=0)
        try:
            yield f"{fcm.url}/_fake"
        finally:
            await fcm.stop()


async def test_faults_default_to_503_and_answer_what_is_in_force(control: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{control}/faults", json={"rate": 1}) as resp:
            faults = (await resp.json())["faults"]
        assert resp.status == 200 and faults["status"] == 503 and faults["rate"] == 1
        assert faults["reason"] in ("ServiceUnavailable", "UNAVAILABLE")
        async with http.post(f"{control}/faults", json={"rate": 0}) as resp:
            assert (await resp.json()) == {"faults": None}
        async with http.post(f"{control}/faults", json={"rate": 2}) as resp:
            assert resp.status == 400 and "error" in await resp.json()


async def test_unregistered_answers_how_many_are_gone_now(control: str) -> None:
    async with aiohttp.ClientSession() as http:
        for tokens, total in ((["a" * 64], 1), (["b" * 64, "c" * 64], 3)):
            async with http.post(f"{control}/unregistered", json={"tokens": tokens}) as resp:
                assert (await resp.json()) == {"unregistered": total}
        async with http.post(f"{control}/unregistered", json={"tokens": "a"}) as resp:
            assert resp.status == 400
        async with http.post(f"{control}/unregistered", data=b"[") as resp:
            assert resp.status == 400


async def test_deliveries_and_stats_are_served(control: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{control}/deliveries") as resp:
            assert (await resp.json()) == []
        async with http.delete(f"{control}/deliveries") as resp:
            assert resp.status == 204
        async with http.get(f"{control}/stats") as resp:
            assert resp.status == 200 and isinstance(await resp.json(), dict)
