-- Alert lifecycle and reach: updates when an incident ends, near-me, neighbourhoods,
-- responders' answers.

-- Categories whose clear/cancel sends no update (an agency's policy knob).
ALTER TABLE agencies ADD COLUMN no_update_categories text[] NOT NULL DEFAULT '{}';

-- An alert, or the update that replaced it on the phone when the incident ended. Only
-- alerts count as "the device got the alert" (who gets an update, the device's feed).
ALTER TABLE deliveries ADD COLUMN kind text NOT NULL DEFAULT 'alert'
    CHECK (kind IN ('alert', 'update'));
CREATE INDEX deliveries_incident_sent ON deliveries (incident_id, device_id)
    WHERE outcome = 'sent' AND kind = 'alert';

-- "Near me": the radius around where the phone is now. The position itself lives in
-- Redis only (GEO set) and is forgotten after GEOPUSH_LOCATION_TTL_MINUTES.
ALTER TABLE devices ADD COLUMN near_me_radius_m integer
    CHECK (near_me_radius_m BETWEEN 300 AND 5000);

-- Imported neighbourhoods (a city's GeoJSON): zones a device can pick by id, and the
-- public location's last resort (the name of the neighbourhood a point lies in).
CREATE TABLE neighbourhoods (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_id   text NOT NULL UNIQUE,     -- the importer's id: re-imports update in place
    name        text NOT NULL,
    geom        geometry(MultiPolygon, 4326) NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX neighbourhoods_geom ON neighbourhoods USING gist (geom);

-- A zone may be a neighbourhood: its geometry is copied (matching stays one GiST test)
-- and follows re-imports.
ALTER TABLE zones ADD COLUMN neighbourhood_id uuid REFERENCES neighbourhoods (id)
    ON DELETE CASCADE;
CREATE INDEX zones_neighbourhood ON zones (neighbourhood_id) WHERE neighbourhood_id IS NOT NULL;

-- What alerted CPR responders answer; the agency sees the counts.
CREATE TABLE responder_answers (
    incident_id uuid NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    status      text NOT NULL CHECK (status IN ('responding', 'on_scene', 'declined')),
    answered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, device_id)
);
