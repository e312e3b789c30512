"""All configuration, read from the environment in one place.

Nothing else in the code base reads ``os.environ``: every process builds one
``Settings`` in its composition root and passes it down.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from server.keys import DEFAULT_PUSH_STREAM_SHARDS, MAX_PUSH_STREAM_SHARDS


def _default_consumer_name() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REDIS_MODES = ("auto", "cluster", "standalone")


def _networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR blocks ("10.0.0.0/8, ::1")."""
    out = []
    for item in env.get(name, "").split(","):
        if item.strip():
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"{name}: {item.strip()!r} is not an address or "
                                  "CIDR block") from None
    return tuple(out)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value}")
    return value


def _non_negative(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


MIN_RETENTION = dt.timedelta(days=2)


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "0").strip().lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


@dataclass(frozen=True)
class ApnsSettings:
    key_file: Path
    key_id: str
    team_id: str
    topic: str
    host: str = "api.push.apple.com"
    port: int = 443
    ca_file: Path | None = None  # extra CA to trust (the fake gateway's); None = system CAs
    max_connections: int = 4
    request_timeout: float = 10.0
    # The app holds Apple's critical-alerts entitlement: an agency's extreme manual
    # alert may then break through silent mode and Do Not Disturb.
    critical_alerts: bool = False


@dataclass(frozen=True)
class FcmSettings:
    service_account_file: Path
    project_id: str | None = None  # default: the service account's project
    endpoint: str = "https://fcm.googleapis.com"
    # Unless set, enough connections that no send waits for one: one per FCM_STREAMS
    # sends in flight (GEOPUSH_SEND_CONCURRENCY).
    max_connections: int = 5
    request_timeout: float = 10.0
    ca_file: Path | None = None   # a CA to trust besides the system's (a fake's, a proxy's)


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    # "auto": ask the node of redis_url whether it is in a Redis Cluster; "cluster" or
    # "standalone": don't ask (a process can then start while Redis is unreachable).
    redis_mode: str = "auto"
    # Replicas that must confirm a hand-off to Redis (an incident published, pushes
    # enqueued) before geopush forgets its own record of it; 0: don't wait (a single
    # Redis, or a cluster without replicas). See ReplicaWait in store/redisclient.py.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 500
    admin_token: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Several web processes on one host share GEOPUSH_HTTP_PORT (SO_REUSEPORT): the
    # kernel spreads new connections over them, no proxy needed in front of each.
    http_reuse_port: bool = False
    # A streaming replica the matcher reads from (None: everything on the primary), and
    # how long a batch waits for it to replay what the primary had when the batch was
    # read before reading from the primary instead (server/store/replica.py).
    database_replica_url: str | None = None
    replica_wait_ms: int = 200
    log_level: str = "INFO"
    # A worker's /metrics (the web process serves it on its HTTP port). None: off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # Retention (the maintenance job in the relay process deletes in batches).
    delivery_retention: dt.timedelta = dt.timedelta(days=30)
    incident_retention: dt.timedelta = dt.timedelta(days=365)
    # Ingest
    max_body_bytes: int = 256 * 1024
    signature_tolerance_s: int = 300
    # Webhooks naming one agency id that fail verification, per minute (0: no limit);
    # past it a 429 instead of a 401, known agency or not.
    rejected_webhooks_per_minute: int = 600
    # Dry runs an agency may make a minute (0: none), a budget apart from its incidents'.
    dry_runs_per_minute: int = 60
    # How long the exact incident location is kept (for matching late revisions)
    # before it is replaced by the public, rounded point.
    exact_location_retention: dt.timedelta = dt.timedelta(hours=24)
    # Workers
    consumer_name: str = field(default_factory=lambda: _default_consumer_name())
    stream_batch: int = 100
    send_concurrency: int = 500
    # A stream entry pending this long on a consumer is presumed orphaned (its worker
    # died) and is claimed by another. Longer than any batch takes to finish.
    claim_idle_ms: int = 60_000
    # Pushes a device gets per hour before only the most severe categories come through.
    device_pushes_per_hour: int = 10
    # Push shards (server/keys.py): the push streams, retry schedules and per-device
    # keys are split over this many Redis hash slots.
    push_stream_shards: int = 8
    # Work items of a large fan-out wait while a platform's push streams hold more than
    # this many pushes (new incidents never wait): the next incident's pushes queue
    # behind at most this many.
    push_backlog_limit: int = 5_000
    # Devices in one work item of a large fan-out (a matcher enqueues twice as many of
    # an incident itself before it hands the rest out).
    fanout_item_devices: int = 2_000
    # Device registrations a client address may make per hour (0: no limit), and the
    # proxies whose X-Forwarded-For names the client (none: the peer is the client).
    device_registrations_per_hour_per_ip: int = 120
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # "module:callable" run before every device registration, which may refuse it
    # (App Attest, Play Integrity; server/web/registration.py).
    registration_check: str | None = None
    # A device's reported position ("near me") is forgotten this long after its last
    # report.
    location_ttl: dt.timedelta = dt.timedelta(minutes=120)
    apns: ApnsSettings | None = None
    fcm: FcmSettings | None = None
    # Editor console
    session_lifetime: dt.timedelta = dt.timedelta(hours=12)
    # Secure cookies always (behind a TLS-terminating proxy); otherwise only when the
    # request itself came over TLS.
    session_cookie_secure: bool = False
    # Public map: a tile URL template ({z}/{x}/{y}); None draws a plain background.
    map_tiles_url: str | None = None
    map_tiles_attribution: str = ""
    # Where the console's and the public map's maps open: lat, lon, zoom.
    map_center: tuple[float, float, int] = (47.6062, -122.3321, 11)
    public_requests_per_minute: int = 120

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("GEOPUSH_DATABASE_URL", "")
        redis_url = env.get("GEOPUSH_REDIS_URL", "")
        if not database_url:
            raise ConfigError("GEOPUSH_DATABASE_URL is not set (make run sets it for you)")
        if not redis_url:
            raise ConfigError("GEOPUSH_REDIS_URL is not set (make run sets it for you)")
        send_concurrency = _int(env, "GEOPUSH_SEND_CONCURRENCY", 500)
        retention = {name: dt.timedelta(days=_float(env, name, default))
                     for name, default in (("GEOPUSH_DELIVERY_RETENTION_DAYS", 30.0),
                                           ("GEOPUSH_INCIDENT_RETENTION_DAYS", 365.0))}
        for name, kept in retention.items():
            # The transparency report rolls a day up a day after it ends: rows must
            # outlive that.
            if kept < MIN_RETENTION:
                raise ConfigError(f"{name} must be at least {MIN_RETENTION.days} days")
        redis_mode = env.get("GEOPUSH_REDIS_MODE") or "auto"
        if redis_mode not in REDIS_MODES:
            raise ConfigError(f"GEOPUSH_REDIS_MODE must be one of {', '.join(REDIS_MODES)}, "
                              f"got {redis_mode!r}")
        for name in ("GEOPUSH_REDIS_WAIT_REPLICAS", "GEOPUSH_REDIS_WAIT_TIMEOUT_MS"):
            if _int(env, name, 0) < 0:
                raise ConfigError(f"{name} must not be negative")
        return cls(
            database_url=database_url,
            redis_url=redis_url,
            redis_mode=redis_mode,
            redis_wait_replicas=_int(env, "GEOPUSH_REDIS_WAIT_REPLICAS", 0),
            redis_wait_timeout_ms=_int(env, "GEOPUSH_REDIS_WAIT_TIMEOUT_MS", 500),
            admin_token=env.get("GEOPUSH_ADMIN_TOKEN") or None,
            http_host=env.get("GEOPUSH_HTTP_HOST", "127.0.0.1"),
            http_port=_int(env, "GEOPUSH_HTTP_PORT", 8080),
            http_reuse_port=_bool(env, "GEOPUSH_HTTP_REUSE_PORT"),
            database_replica_url=env.get("GEOPUSH_DATABASE_REPLICA_URL") or None,
            replica_wait_ms=_non_negative(env, "GEOPUSH_DATABASE_REPLICA_WAIT_MS", 200),
            log_level=env.get("GEOPUSH_LOG_LEVEL", "INFO").upper(),
            metrics_host=env.get("GEOPUSH_METRICS_HOST", "127.0.0.1"),
            metrics_port=_int(env, "GEOPUSH_METRICS_PORT", 0)
            if env.get("GEOPUSH_METRICS_PORT") else None,
            delivery_retention=retention["GEOPUSH_DELIVERY_RETENTION_DAYS"],
            incident_retention=retention["GEOPUSH_INCIDENT_RETENTION_DAYS"],
            exact_location_retention=dt.timedelta(
                hours=_float(env, "GEOPUSH_EXACT_LOCATION_RETENTION_HOURS", 24.0)),
            rejected_webhooks_per_minute=_int(env, "GEOPUSH_REJECTED_WEBHOOKS_PER_MINUTE", 600),
            stream_batch=_int(env, "GEOPUSH_STREAM_BATCH", 100),
            send_concurrency=send_concurrency,
            claim_idle_ms=_int(env, "GEOPUSH_CLAIM_IDLE_MS", 60_000),
            device_pushes_per_hour=_int(env, "GEOPUSH_DEVICE_PUSHES_PER_HOUR", 10),
            push_stream_shards=_push_stream_shards(env),
            push_backlog_limit=_positive(env, "GEOPUSH_PUSH_BACKLOG_LIMIT", 5_000),
            fanout_item_devices=_positive(env, "GEOPUSH_FANOUT_ITEM_DEVICES", 2_000),
            device_registrations_per_hour_per_ip=_int(
                env, "GEOPUSH_DEVICE_REGISTRATIONS_PER_HOUR_PER_IP", 120),
            trusted_proxies=_networks(env, "GEOPUSH_TRUSTED_PROXIES"),
            registration_check=env.get("GEOPUSH_REGISTRATION_CHECK") or None,
            location_ttl=dt.timedelta(minutes=_positive(env, "GEOPUSH_LOCATION_TTL_MINUTES",
                                                        120)),
            dry_runs_per_minute=_int(env, "GEOPUSH_DRY_RUNS_PER_MINUTE", 60),
            consumer_name=env.get("GEOPUSH_CONSUMER_NAME") or _default_consumer_name(),
            apns=_apns_from_env(env),
            fcm=_fcm_from_env(env, send_concurrency),
            session_lifetime=dt.timedelta(hours=_float(env, "GEOPUSH_SESSION_HOURS", 12.0)),
            session_cookie_secure=env.get("GEOPUSH_SESSION_COOKIE_SECURE", "") == "1",
            map_tiles_url=_tiles_url(env),
            map_tiles_attribution=env.get("GEOPUSH_MAP_TILES_ATTRIBUTION", ""),
            map_center=_map_center(env),
            public_requests_per_minute=_int(env, "GEOPUSH_PUBLIC_REQUESTS_PER_MINUTE", 120),
        )


def _push_stream_shards(env: Mapping[str, str]) -> int:
    shards = _positive(env, "GEOPUSH_PUSH_STREAM_SHARDS", DEFAULT_PUSH_STREAM_SHARDS)
    if shards > MAX_PUSH_STREAM_SHARDS:
        raise ConfigError(f"GEOPUSH_PUSH_STREAM_SHARDS must be at most "
                          f"{MAX_PUSH_STREAM_SHARDS}, got {shards}")
    return shards


def _map_center(env: Mapping[str, str]) -> tuple[float, float, int]:
    raw = env.get("GEOPUSH_MAP_CENTER") or "47.6062,-122.3321,11"
    try:
        lat, lon, zoom = raw.split(",")
        center = (float(lat), float(lon), int(zoom))
    except ValueError:
        raise ConfigError(f"GEOPUSH_MAP_CENTER must be lat,lon,zoom, got {raw!r}") from None
    if not (abs(center[0]) <= 90 and abs(center[1]) <= 180 and 1 <= center[2] <= 19):
        raise ConfigError(f"GEOPUSH_MAP_CENTER is out of range: {raw!r}")
    return center


def _tiles_url(env: Mapping[str, str]) -> str | None:
    url = env.get("GEOPUSH_MAP_TILES_URL") or None
    if url is not None and (not url.startswith(("https://", "http://"))
                            or not all(p in url for p in ("{z}", "{x}", "{y}"))):
        raise ConfigError("GEOPUSH_MAP_TILES_URL must be an http(s) URL with {z}, {x} "
                          f"and {{y}}, got {url!r}")
    return url


def database_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """GEOPUSH_DATABASE_URL alone, for commands that need nothing else (``geopush cad
    validate --agency``)."""
    env = os.environ if env is None else env
    url = env.get("GEOPUSH_DATABASE_URL", "")
    if not url:
        raise ConfigError("GEOPUSH_DATABASE_URL is not set")
    return url


def _apns_from_env(env: Mapping[str, str]) -> ApnsSettings | None:
    key_file = env.get("GEOPUSH_APNS_KEY_FILE")
    if not key_file:
        return None
    missing = [
        name
        for name in ("GEOPUSH_APNS_KEY_ID", "GEOPUSH_APNS_TEAM_ID", "GEOPUSH_APNS_TOPIC")
        if not env.get(name)
    ]
    if missing:
        raise ConfigError(f"GEOPUSH_APNS_KEY_FILE is set but {', '.join(missing)} is not")
    ca_file = env.get("GEOPUSH_APNS_CA_FILE")
    return ApnsSettings(
        key_file=Path(key_file),
        key_id=env["GEOPUSH_APNS_KEY_ID"],
        team_id=env["GEOPUSH_APNS_TEAM_ID"],
        topic=env["GEOPUSH_APNS_TOPIC"],
        host=env.get("GEOPUSH_APNS_HOST", "api.push.apple.com"),
        port=_int(env, "GEOPUSH_APNS_PORT", 443),
        ca_file=Path(ca_file) if ca_file else None,
        max_connections=_int(env, "GEOPUSH_APNS_MAX_CONNECTIONS", 4),
        request_timeout=_float(env, "GEOPUSH_APNS_TIMEOUT", 10.0),
        critical_alerts=_bool(env, "GEOPUSH_APNS_CRITICAL_ALERTS"),
    )


# Concurrent streams FCM allows per HTTP/2 connection (its SETTINGS), and so the sends
# geopush puts on one connection before it opens another.
FCM_STREAMS = 100


def fcm_connections(sends_in_flight: int) -> int:
    """Connections that carry ``sends_in_flight`` without one waiting for another."""
    return -(-max(1, sends_in_flight) // FCM_STREAMS)


def _fcm_from_env(env: Mapping[str, str], send_concurrency: int) -> FcmSettings | None:
    sa_file = env.get("GEOPUSH_FCM_SERVICE_ACCOUNT_FILE")
    if not sa_file:
        return None
    if env.get("GEOPUSH_FCM_HTTP_VERSION", "2") != "2":
        # Said rather than ignored: whoever set it expects something HTTP/2 can't give.
        raise ConfigError("GEOPUSH_FCM_HTTP_VERSION is gone: geopush speaks HTTP/2 to FCM")
    return FcmSettings(
        service_account_file=Path(sa_file),
        project_id=env.get("GEOPUSH_FCM_PROJECT") or None,
        endpoint=env.get("GEOPUSH_FCM_ENDPOINT", "https://fcm.googleapis.com").rstrip("/"),
        max_connections=_int(env, "GEOPUSH_FCM_MAX_CONNECTIONS",
                             fcm_connections(send_concurrency)),
        request_timeout=_float(env, "GEOPUSH_FCM_TIMEOUT", 10.0),
        ca_file=Path(env["GEOPUSH_FCM_CA_FILE"]) if env.get("GEOPUSH_FCM_CA_FILE") else None,
    )
