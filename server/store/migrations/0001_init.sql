-- geopush schema, first cut: agencies, incidents (+ outbox), devices and zones, deliveries.
-- Privacy: no table holds a caller's data, a narrative or the street address as sent;
-- incidents keep the exact geometry (for matching) and a generalized public location.

CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE agencies (
    id              text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name            text NOT NULL,
    timezone        text NOT NULL,
    -- normalized call type (code or text) -> category
    call_types      jsonb NOT NULL DEFAULT '{}'::jsonb,
    review          boolean NOT NULL DEFAULT false,
    -- HMAC keys must be usable to verify, so they are kept as issued (never logged).
    signing_secret  text NOT NULL,
    previous_secret text,
    previous_secret_expires_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE incidents (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agency_id        text NOT NULL REFERENCES agencies (id),
    external_id      text NOT NULL,
    revision         timestamptz NOT NULL,           -- the CAD's updated_at
    status           text NOT NULL CHECK (status IN ('active', 'cleared', 'cancelled')),
    call_type        text NOT NULL,
    category         text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    geom             geometry(Geometry, 4326) NOT NULL,  -- exact: matching only
    public_point     geometry(Point, 4326) NOT NULL,     -- rounded to about 100 m
    public_location  text,                                -- "5300 block of 24th Ave NE"
    location_kind    text CHECK (location_kind IN ('public', 'residence')),
    priority         integer,
    decision         text NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agency_id, external_id)
);
CREATE INDEX incidents_received_at ON incidents (received_at);

-- Transactional outbox: a row is written with the incident and deleted once the
-- incident is on the Redis stream, so an accepted incident is never lost when Redis
-- is down or the web process dies between commit and XADD.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    incident_id  uuid NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    platform           text NOT NULL CHECK (platform IN ('apns', 'fcm')),
    token              text NOT NULL,
    token_disabled_at  timestamptz,
    token_disabled_reason text,
    secret_hash        bytea NOT NULL,
    timezone           text NOT NULL DEFAULT 'UTC',
    locale             text NOT NULL DEFAULT 'en',
    categories         text[],        -- NULL: every alertable category
    quiet_start        time,
    quiet_end          time,
    responder          boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_token ON devices (platform, token);

CREATE TABLE zones (
    id         bigserial PRIMARY KEY,
    device_id  uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    name       text NOT NULL,
    geom       geometry(MultiPolygon, 4326) NOT NULL
);
CREATE INDEX zones_geom ON zones USING gist (geom);
CREATE INDEX zones_device ON zones (device_id);

CREATE TABLE deliveries (
    id           bigserial PRIMARY KEY,
    incident_id  uuid NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    device_id    uuid REFERENCES devices (id) ON DELETE SET NULL,
    platform     text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('sent', 'token_gone', 'retry', 'failed', 'dead')),
    reason       text,
    status_code  integer,
    gateway_id   text,
    attempt      integer NOT NULL DEFAULT 1,
    latency_ms   integer,            -- incident arrival -> gateway acceptance
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_incident ON deliveries (incident_id);
CREATE INDEX deliveries_device ON deliveries (device_id);
