-- CPR responders and AEDs (the PulsePoint model).

-- Responders an agency has verified: the only ones alerted to cardiac arrests in
-- residences (or places of unknown kind). Public-place arrests alert every responder.
CREATE TABLE agency_responders (
    agency_id  text NOT NULL REFERENCES agencies (id) ON DELETE CASCADE,
    device_id  uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agency_id, device_id)
);
CREATE INDEX agency_responders_device ON agency_responders (device_id);

CREATE TABLE aeds (
    id          bigserial PRIMARY KEY,
    source_id   text,                       -- the importer's id, for re-imports
    name        text NOT NULL,
    description text,                       -- "Lobby, left of the elevators"
    geom        geometry(Point, 4326) NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_id)
);
CREATE INDEX aeds_geom ON aeds USING gist (geom);

CREATE INDEX deliveries_device_recent ON deliveries (device_id, created_at DESC)
    WHERE outcome = 'sent';
