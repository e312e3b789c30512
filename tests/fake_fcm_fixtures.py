"""Fixtures for tests that talk to an in-process fake FCM with a trusted service account.

Registered for every test by ``pytest_plugins`` in tests/conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtest.fake_fcm import FakeFcm
from server.dev.devkeys import ensure_fcm_service_account, public_key_pem

PROJECT = "geopush-test"


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one RSA key for the module; ensure_fcm_service_account keeps it across token_uris
    return tmp_path_factory.mktemp("fcm-keys")


@pytest.fixture
async def fake(key_dir: Path) -> AsyncIterator[FakeFcm]:
    server = FakeFcm(project_id=PROJECT, service_account_public_keys={})
    await server.start(port=0)
    path = ensure_fcm_service_account(key_dir, server.token_uri, PROJECT)
    info = json.loads(path.read_text())
    server.trust(info["client_email"], public_key_pem(info["private_key"].encode()))
    try:
        yield server
    finally:
        await server.stop()
