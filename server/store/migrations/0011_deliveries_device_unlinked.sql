-- deliveries.device_id loses its foreign key to devices; what the key did is kept by a
-- trigger and an advisory lock.
--
-- Why: the key's check ran for every delivery row, and the check is a SELECT ... FOR
-- KEY SHARE of the device's row: a row lock written into the devices heap (a WAL
-- record, and after each checkpoint a full image of the page) for every push sent. At
-- a metro's scale that was more than half of what PostgreSQL spent recording a push,
-- and most of its WAL (docs/BENCHMARKS.md, "Recording a delivery").
--
-- What is kept, whatever deletes a device (the API's erasure, an operator's psql):
--   - ON DELETE SET NULL: the trigger below unlinks the device's delivery rows in the
--     deleting transaction, as the key's action did;
--   - no row ever points at a device that is gone: the trigger holds the advisory lock
--     DEVICE_LINK_LOCK exclusively until its transaction ends, and a sender records a
--     batch holding it shared, writing NULL for devices that no longer exist
--     (server/store/deliveries.py). So a push that was in flight while its device was
--     erased is recorded unlinked, like the rows the key's action left.
-- The incident key stays: its check locks one row a batch (the incident's), not one a push.

ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_device_id_fkey;

-- Finding a device's rows of every outcome: the unlinking below (the key's action did
-- the same search) read the whole table, because the index by device (0003) holds the
-- 'sent' rows only. Every other outcome is rare, so indexing them too costs little;
-- the device's feed reads the same index (with outcome and kind as a filter).
DROP INDEX IF EXISTS deliveries_device_recent;
CREATE INDEX deliveries_device ON deliveries (device_id, created_at DESC);

CREATE FUNCTION deliveries_unlink_devices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- DEVICE_LINK_LOCK ('geopdevi'): waits for the senders' recordings in progress,
    -- and holds back new ones until this transaction ends.
    PERFORM pg_advisory_xact_lock(7450483687065745001);
    UPDATE deliveries SET device_id = NULL
     WHERE device_id IN (SELECT id FROM gone) AND device_id IS NOT NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_unlink_deliveries AFTER DELETE ON devices
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_unlink_devices();
