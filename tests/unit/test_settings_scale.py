"""The settings of running past one machine: a shared HTTP port, a read replica."""

from __future__ import annotations

import pytest

from server.settings import ConfigError, Settings

BASE = {"GEOPUSH_DATABASE_URL": "postgresql://x/y", "GEOPUSH_REDIS_URL": "redis://x"}


def test_defaults_keep_one_process_per_port_and_every_read_on_the_primary() -> None:
    settings = Settings.from_env(BASE)
    assert settings.http_reuse_port is False
    assert settings.database_replica_url is None
    assert settings.replica_wait_ms == 200


def test_set_by_environment() -> None:
    settings = Settings.from_env({
        **BASE, "GEOPUSH_HTTP_REUSE_PORT": "1",
        "GEOPUSH_DATABASE_REPLICA_URL": "postgresql://replica/y",
        "GEOPUSH_DATABASE_REPLICA_WAIT_MS": "0"})
    assert settings.http_reuse_port is True
    assert settings.database_replica_url == "postgresql://replica/y"
    assert settings.replica_wait_ms == 0


@pytest.mark.parametrize(("name", "value"), [
    ("GEOPUSH_HTTP_REUSE_PORT", "sometimes"),
    ("GEOPUSH_DATABASE_REPLICA_WAIT_MS", "-1"),
    ("GEOPUSH_DATABASE_REPLICA_WAIT_MS", "soon"),
])
def test_bad_values_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**BASE, name: value})
