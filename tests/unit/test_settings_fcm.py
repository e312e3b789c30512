"""FCM settings: HTTP/2 unless told otherwise, and a pool sized to the sends in flight."""

from __future__ import annotations

import pytest

from server.settings import FCM_STREAMS, ConfigError, Settings

BASE = {"GEOPUSH_DATABASE_URL": "postgresql://x/y", "GEOPUSH_REDIS_URL": "redis://x",
        "GEOPUSH_FCM_SERVICE_ACCOUNT_FILE": "/keys/sa.json"}


def _fcm(**env: str) -> tuple[bool, int]:
    fcm = Settings.from_env({**BASE, **env}).fcm
    assert fcm is not None
    return fcm.http2, fcm.max_connections


def test_http2_by_default_with_a_connection_per_hundred_sends_in_flight() -> None:
    assert FCM_STREAMS == 100
    assert _fcm() == (True, 5)                                  # 500 sends in flight
    assert _fcm(GEOPUSH_SEND_CONCURRENCY="501") == (True, 6)
    assert _fcm(GEOPUSH_SEND_CONCURRENCY="1") == (True, 1)
    assert _fcm(GEOPUSH_FCM_MAX_CONNECTIONS="2") == (True, 2)


def test_http11_takes_a_connection_per_send_in_flight() -> None:
    assert _fcm(GEOPUSH_FCM_HTTP_VERSION="1.1") == (False, 500)
    assert _fcm(GEOPUSH_FCM_HTTP_VERSION="1.1", GEOPUSH_SEND_CONCURRENCY="64") == (False, 64)
    assert _fcm(GEOPUSH_FCM_HTTP_VERSION="1.1", GEOPUSH_FCM_MAX_CONNECTIONS="32") == (False, 32)


@pytest.mark.parametrize("value", ["3", "h2", "http/1.1", "1"])
def test_other_versions_are_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match="GEOPUSH_FCM_HTTP_VERSION"):
        Settings.from_env({**BASE, "GEOPUSH_FCM_HTTP_VERSION": value})
