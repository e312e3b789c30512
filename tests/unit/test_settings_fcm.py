"""FCM settings: a pool sized to the sends in flight, and the retired HTTP/1.1 switch
refused by name rather than silently ignored."""

from __future__ import annotations

import pytest

from server.settings import FCM_STREAMS, ConfigError, Settings

BASE = {"GEOPUSH_DATABASE_URL": "postgresql://x/y", "GEOPUSH_REDIS_URL": "redis://x",
        "GEOPUSH_FCM_SERVICE_ACCOUNT_FILE": "/keys/sa.json"}


def _connections(**env: str) -> int:
    fcm = Settings.from_env({**BASE, **env}).fcm
    assert fcm is not None
    return fcm.max_connections


def test_a_connection_per_hundred_sends_in_flight() -> None:
    assert FCM_STREAMS == 100
    assert _connections() == 5                                  # 500 sends in flight
    assert _connections(GEOPUSH_SEND_CONCURRENCY="501") == 6
    assert _connections(GEOPUSH_SEND_CONCURRENCY="1") == 1
    assert _connections(GEOPUSH_FCM_MAX_CONNECTIONS="2") == 2


def test_http2_may_still_be_named() -> None:
    assert _connections(GEOPUSH_FCM_HTTP_VERSION="2") == 5


@pytest.mark.parametrize("value", ["1.1", "3", "h2"])
def test_the_http11_switch_is_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match="GEOPUSH_FCM_HTTP_VERSION"):
        Settings.from_env({**BASE, "GEOPUSH_FCM_HTTP_VERSION": value})
