"""GEOPUSH_REDIS_MODE and the replica wait: defaults, values, and bad values refused by
name."""

from __future__ import annotations

import pytest

from server.settings import ConfigError, Settings
from server.store.redisclient import NO_WAIT, ReplicaWait, replica_wait

BASE = {"GEOPUSH_DATABASE_URL": "postgresql://x/y", "GEOPUSH_REDIS_URL": "redis://x"}


def test_defaults_ask_the_node_and_wait_for_no_replica() -> None:
    settings = Settings.from_env(BASE)
    assert settings.redis_mode == "auto"
    assert replica_wait(settings) == ReplicaWait(0, 500) == NO_WAIT


def test_set_by_environment() -> None:
    settings = Settings.from_env({**BASE, "GEOPUSH_REDIS_MODE": "cluster",
                                  "GEOPUSH_REDIS_WAIT_REPLICAS": "1",
                                  "GEOPUSH_REDIS_WAIT_TIMEOUT_MS": "250"})
    assert settings.redis_mode == "cluster"
    assert replica_wait(settings) == ReplicaWait(1, 250)


@pytest.mark.parametrize(("name", "value"), [
    ("GEOPUSH_REDIS_MODE", "sentinel"), ("GEOPUSH_REDIS_WAIT_REPLICAS", "-1"),
    ("GEOPUSH_REDIS_WAIT_REPLICAS", "one"), ("GEOPUSH_REDIS_WAIT_TIMEOUT_MS", "-5"),
])
def test_bad_values_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**BASE, name: value})
