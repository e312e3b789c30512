-- The public transparency report's daily counts, kept past the retention of the rows
-- they count: incidents (GEOPUSH_INCIDENT_RETENTION_DAYS) and deliveries
-- (GEOPUSH_DELIVERY_RETENTION_DAYS). Counts only: no incident id, no location finer
-- than the agency, nothing about a device.

CREATE TABLE transparency_daily (
    agency_id            text NOT NULL REFERENCES agencies (id) ON DELETE CASCADE,
    day                  date NOT NULL,          -- in the agency's time zone
    category             text NOT NULL,
    received             integer NOT NULL,
    suppressed_category  integer NOT NULL,
    suppressed_stale     integer NOT NULL,
    suppressed_test      integer NOT NULL,
    suppressed_unmapped  integer NOT NULL,
    suppressed_other     integer NOT NULL,       -- cleared, cancelled or outdated on arrival
    review_held          integer NOT NULL,
    review_approved      integer NOT NULL,
    review_rejected      integer NOT NULL,
    review_expired       integer NOT NULL,
    alerted              integer NOT NULL,
    devices_reached      integer NOT NULL,
    latency_p50_ms       double precision,       -- incident received -> gateway accepted
    latency_p95_ms       double precision,
    PRIMARY KEY (agency_id, day, category)
);

-- The last day of each agency rolled up into transparency_daily: later days are
-- counted from the live rows when the report is asked for.
CREATE TABLE transparency_rollups (
    agency_id  text PRIMARY KEY REFERENCES agencies (id) ON DELETE CASCADE,
    through    date NOT NULL
);
