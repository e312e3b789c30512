-- Agency policy knobs, editorial review, incident lifecycle and retention.

ALTER TABLE agencies
    -- NULL: the product's default alertable categories. Otherwise a subset of them.
    ADD COLUMN alertable_categories text[],
    ADD COLUMN staleness_minutes integer NOT NULL DEFAULT 60
        CHECK (staleness_minutes BETWEEN 1 AND 1440),
    -- Categories held for an editor even when the agency-wide review flag is off.
    ADD COLUMN review_categories text[] NOT NULL DEFAULT '{}',
    ADD COLUMN responder_radius_m integer NOT NULL DEFAULT 400
        CHECK (responder_radius_m BETWEEN 50 AND 5000),
    ADD COLUMN rate_limit_per_minute integer NOT NULL DEFAULT 1200
        CHECK (rate_limit_per_minute > 0);

ALTER TABLE incidents
    -- false for CAP Test/Exercise/Draft/System and the like: stored, never pushed
    ADD COLUMN actual boolean NOT NULL DEFAULT true,
    -- set once the exact geometry has been replaced by the public point (retention)
    ADD COLUMN exact_purged_at timestamptz,
    -- an editor's wording, when one approved the alert with edits
    ADD COLUMN title_override text,
    ADD COLUMN body_override text;

CREATE INDEX incidents_recent_by_category ON incidents (category, occurred_at);
CREATE INDEX incidents_unpurged ON incidents (received_at) WHERE exact_purged_at IS NULL;

-- Items waiting for an editor. The narrative lives here only (redacted), and only
-- until the item is decided or expires.
CREATE TABLE review_items (
    incident_id  uuid PRIMARY KEY REFERENCES incidents (id) ON DELETE CASCADE,
    agency_id    text NOT NULL REFERENCES agencies (id),
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'approved', 'rejected', 'expired', 'superseded')),
    narrative    text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    decided_at   timestamptz,
    decided_by   text
);
CREATE INDEX review_items_pending ON review_items (created_at) WHERE state = 'pending';

ALTER TABLE deliveries DROP CONSTRAINT deliveries_outcome_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_outcome_check
    CHECK (outcome IN ('sent', 'token_gone', 'retry', 'failed', 'dead', 'withdrawn'));
