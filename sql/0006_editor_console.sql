-- The editor console: named accounts per agency, their sessions, the audit log, and
-- manual alerts (delivered through the incidents pipeline, source 'manual').

CREATE TABLE users (
    id             bigserial PRIMARY KEY,
    agency_id      text NOT NULL REFERENCES agencies (id) ON DELETE CASCADE,
    -- one namespace for every agency: the sign-in form asks for a username only
    username       text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._@-]{2,63}$'),
    -- argon2id, PHC string format (parameters and salt included)
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('editor', 'agency_admin')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL
);
CREATE INDEX users_agency ON users (agency_id);

-- A session is a random token in an HttpOnly cookie; only its SHA-256 is stored, so a
-- copy of this table signs nobody in. The CSRF token is per session (synchronizer token).
CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Who did what, when: review decisions, manual alerts, user and call-type map changes.
-- Never a narrative, a password or an exact location.
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,            -- a username, or 'operator' for the admin token
    agency_id  text REFERENCES agencies (id) ON DELETE CASCADE,
    action     text NOT NULL,            -- review.approve, alert.send, user.create, ...
    target     text,                     -- an incident id, a username, ...
    details    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_agency_at ON audit_log (agency_id, at DESC);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- Manual alerts ride the incidents pipeline (matcher, senders, withdrawal) as incidents
-- with source 'manual': geom is the drawn area, which is public by nature.
ALTER TABLE incidents
    ADD COLUMN source text NOT NULL DEFAULT 'cad' CHECK (source IN ('cad', 'manual')),
    -- a manual alert's end (a CAD incident's is occurred_at + the alert lifetime)
    ADD COLUMN expires_at timestamptz;

CREATE TABLE manual_alerts (
    incident_id  uuid PRIMARY KEY REFERENCES incidents (id) ON DELETE CASCADE,
    agency_id    text NOT NULL REFERENCES agencies (id) ON DELETE CASCADE,
    title        text NOT NULL,
    body         text NOT NULL,
    severity     text NOT NULL CHECK (severity IN ('extreme', 'severe', 'moderate')),
    -- kept here as drawn: the incident's geom may be generalized by retention
    area         geometry(Polygon, 4326) NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    sent_by      text NOT NULL,
    audience     integer NOT NULL        -- devices whose zones met the area when sent
);
CREATE INDEX manual_alerts_agency_sent ON manual_alerts (agency_id, sent_at DESC);

-- The console's live queue: every change to a review item (from ingest, a decision, the
-- expiry sweep, any process) is announced, with only the agency and the incident id.
CREATE FUNCTION notify_review_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('geopush_review', NEW.agency_id || ' ' || NEW.incident_id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER review_items_notify
    AFTER INSERT OR UPDATE ON review_items
    FOR EACH ROW EXECUTE FUNCTION notify_review_change();

-- The public map: recent alerted incidents by time.
CREATE INDEX incidents_alerted_recent ON incidents (occurred_at) WHERE decision = 'alert';
