-- deliveries loses its two foreign keys (to devices and to incidents); what they did
-- is kept by triggers and one advisory lock (docs/adr/0006-deliveries-without-keys.md).
--
-- Why: a key's check runs once a delivery row: a query of the referenced row, FOR KEY
-- SHARE. For devices that is a row lock written into the devices heap (a WAL record,
-- and after each checkpoint a full image of the page) for every push sent; for
-- incidents a query per row for the same row. Together they were more than a third of
-- what PostgreSQL spent recording a push, and most of its WAL (docs/BENCHMARKS.md,
-- "Recording a delivery").
--
-- What is kept, whatever deletes (the API's erasure, the retention job, an operator's
-- psql) and whatever writes deliveries (the senders' COPY, an INSERT):
--   - devices' ON DELETE SET NULL: deleting devices unlinks their rows, in the deleting
--     statement's trigger;
--   - incidents' ON DELETE CASCADE: deleting incidents deletes their rows, likewise;
--   - no row points at a device or an incident that is gone, also when it is written
--     after the deletion (a push in flight when its device was erased): the trigger on
--     deliveries unlinks rows of devices deleted in the last day (their ids are kept
--     that long in erased_devices) and drops rows of incidents that don't exist.
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

-- Devices deleted in the last day: their ids only (random, and linked to nothing once
-- the device's rows are unlinked). Emptied by the maintenance worker.
CREATE TABLE erased_devices (
    id         uuid PRIMARY KEY,
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
    INSERT INTO erased_devices (id) SELECT id FROM gone
        ON CONFLICT (id) DO UPDATE SET erased_at = now();
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
    IF EXISTS (SELECT 1 FROM erased_devices) THEN
        SELECT array_agg(a.id) INTO late
          FROM added a JOIN erased_devices e ON e.id = a.device_id;
        IF late IS NOT NULL THEN
            UPDATE deliveries SET device_id = NULL WHERE id = ANY (late);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_check_links AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_check_links();
