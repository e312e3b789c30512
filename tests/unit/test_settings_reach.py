"""The settings this issue adds: near-me time-to-live and Apple's critical alerts."""

from __future__ import annotations

import datetime as dt

import pytest

from server.settings import ConfigError, Settings

BASE = {"GEOPUSH_DATABASE_URL": "postgresql://x/y", "GEOPUSH_REDIS_URL": "redis://x"}
APNS = {**BASE, "GEOPUSH_APNS_KEY_FILE": "/k.p8", "GEOPUSH_APNS_KEY_ID": "K",
        "GEOPUSH_APNS_TEAM_ID": "T", "GEOPUSH_APNS_TOPIC": "org.example.app"}


def test_defaults() -> None:
    settings = Settings.from_env(APNS)
    assert settings.location_ttl == dt.timedelta(minutes=120)
    assert settings.apns is not None and settings.apns.critical_alerts is False


def test_set_by_environment() -> None:
    settings = Settings.from_env({**APNS, "GEOPUSH_LOCATION_TTL_MINUTES": "30",
                                  "GEOPUSH_APNS_CRITICAL_ALERTS": "1"})
    assert settings.location_ttl == dt.timedelta(minutes=30)
    assert settings.apns is not None and settings.apns.critical_alerts is True


@pytest.mark.parametrize(("name", "value"), [
    ("GEOPUSH_LOCATION_TTL_MINUTES", "0"), ("GEOPUSH_LOCATION_TTL_MINUTES", "two hours"),
    ("GEOPUSH_APNS_CRITICAL_ALERTS", "maybe"),
])
def test_bad_values_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**APNS, name: value})
