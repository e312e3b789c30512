-- deliveries loses its two foreign keys (to devices and to incidents); what they did
-- is kept by triggers and one advisory lock (docs/adr/0006-deliveries-without-keys.md).
--
-- Why: a key's check runs once a delivery row: a query of the referenced row, FOR KEY
-- SHARE. For devices that is a row lock written into the devices heap (a WAL record,
-- and after each checkpoint a full image of the page) for every push sent; for
-- incidents a query per row for the same row. Together they were more than half of
-- what PostgreSQL spent recording a push, and most of its WAL (docs/BENCHMARKS.md,
-- "The send path cheaper per push").
--
-- What is kept, whatever deletes (the API's erasure, the retention job, an operator's
-- psql) and whatever writes deliveries (the senders' COPY, an INSERT):
--   - devices' ON DELETE SET NULL: deleting devices unlinks their rows, in the deleting
--     statement's trigger;
--   - incidents' ON DELETE CASCADE: deleting incidents deletes their rows, likewise;
--   - no row points at a device or an incident that is gone, also when it is written
--     after the deletion (a push in flight when its device was erased): the trigger on
--     deliveries drops rows of incidents that don't exist, and unlinks rows of devices
--     that don't exist. It looks devices up only for rows whose device's tag (16 bits
--     of a hash of its id) is that of a device deleted in the last day: nearly always
--     none, so recording a push costs no look-up. A tag is shared by one device in
--     65,536 and is not the id: erasure leaves no id behind.
--     The triggers take the advisory lock 'geopdevi', exclusive on delete and shared on
--     insert, so whichever transaction commits second sees what the first wrote. A
--     push is in flight for the seconds of its send (erasure takes the device's queued
--     pushes out of Redis: server/store/erasure.py), so a day is ample.

ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_device_id_fkey,
                       DROP CONSTRAINT IF EXISTS deliveries_incident_id_fkey;

-- Finding a device's rows of every outcome: unlinking them (the key's action did the
-- same search) read the whole table, because the index by device (0003) holds the
-- 'sent' rows only. Other outcomes are rare, so indexing them too costs little; the
-- device's feed reads the same index, outcome and kind as a filter.
DROP INDEX IF EXISTS deliveries_device_recent;
CREATE INDEX deliveries_device ON deliveries (device_id, created_at DESC);

-- 16 bits of the md5 of a device id: whether a delivery row may be of a device deleted
-- lately, without keeping the ids of deleted devices.
CREATE FUNCTION geopush_device_tag(id uuid) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ('x' || left(md5(id::text), 4))::bit(16)::integer;

-- The tags of devices deleted in the last day. Emptied by the maintenance worker.
CREATE TABLE erased_device_tags (
    tag        integer NOT NULL,
    erased_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION devices_unlink_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gone) THEN
        RETURN NULL;
    END IF;
    -- Waits for the deliveries being written now, and holds back new ones until this
    -- transaction ends; the statements below see what those committed.
    PERFORM pg_advisory_xact_lock(7450483687065745001);    -- 'geopdevi'
    INSERT INTO erased_device_tags (tag) SELECT geopush_device_tag(id) FROM gone;
    UPDATE deliveries SET device_id = NULL WHERE device_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;

CREATE TRIGGER devices_unlink_deliveries AFTER DELETE ON devices
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION devices_unlink_deliveries();

CREATE FUNCTION incidents_delete_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gone) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(7450483687065745001);    -- 'geopdevi'
    DELETE FROM deliveries WHERE incident_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;

CREATE TRIGGER incidents_delete_deliveries AFTER DELETE ON incidents
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION incidents_delete_deliveries();

CREATE FUNCTION deliveries_check_links() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    late bigint[];
BEGIN
    -- Held until this transaction ends: a device or incident deleted meanwhile waits
    -- for it, then sees these rows. Taken before the look-ups, whose snapshots are
    -- their own (each statement of a function takes one).
    PERFORM pg_advisory_xact_lock_shared(7450483687065745001);    -- 'geopdevi'
    -- A batch is about one incident or a few: look each up once, not once a row.
    IF EXISTS (SELECT 1 FROM (SELECT DISTINCT incident_id FROM added) a
                WHERE NOT EXISTS (SELECT 1 FROM incidents i WHERE i.id = a.incident_id)) THEN
        SELECT array_agg(a.id) INTO late FROM added a
         WHERE NOT EXISTS (SELECT 1 FROM incidents i WHERE i.id = a.incident_id);
        -- By primary key: a join to deliveries could plan a scan of the table.
        DELETE FROM deliveries WHERE id = ANY (late);
    END IF;
    IF EXISTS (SELECT 1 FROM erased_device_tags) THEN
        SELECT array_agg(a.id) INTO late FROM added a
         WHERE geopush_device_tag(a.device_id) IN (SELECT tag FROM erased_device_tags)
           AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = a.device_id);
        IF late IS NOT NULL THEN
            UPDATE deliveries SET device_id = NULL WHERE id = ANY (late);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_check_links AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_check_links();
