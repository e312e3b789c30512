-- Each zone carries a copy of what the match reads of its device (server/store/
-- matching.py, _reached), so the zone half of the match reads zones only: the GiST
-- scan already visits each zone's heap row to recheck the geometry, and the copy is
-- on that row. Before, every zone found cost a lookup in devices (a B-tree descent by
-- uuid, in spatial order, so random): at a metro's scale, 7k-100k lookups an incident
-- and more than half of the match's time (docs/BENCHMARKS.md, "Streaming matcher").
--
-- devices stays the one source of truth; the copies are kept in step here, in SQL, by
-- two triggers, whatever writes the rows (the API, an operator's psql, a seed script):
--   - a zone inserted (or moved to another device) takes its device's values, reading
--     the device row FOR SHARE, so a concurrent device update waits for the zone's
--     transaction and then updates the zone too (or the zone sees the update);
--   - a device whose copied columns change updates its zones (a device has at most a
--     few zones: MAX_ZONES, so a preferences or token write touches a handful of rows).
-- A device deleted (erasure) takes its zones with it (ON DELETE CASCADE, 0001). No new
-- kind of data is stored: the same columns of the same device, beside its zones.

ALTER TABLE zones
    ADD COLUMN platform          text,
    ADD COLUMN token             text,
    ADD COLUMN token_disabled_at timestamptz,
    ADD COLUMN locale            text,
    ADD COLUMN timezone          text,
    ADD COLUMN categories        text[],
    ADD COLUMN quiet_start       time,
    ADD COLUMN quiet_end         time;

UPDATE zones z
   SET platform = d.platform, token = d.token, token_disabled_at = d.token_disabled_at,
       locale = d.locale, timezone = d.timezone, categories = d.categories,
       quiet_start = d.quiet_start, quiet_end = d.quiet_end
  FROM devices d
 WHERE d.id = z.device_id;

ALTER TABLE zones
    ALTER COLUMN platform SET NOT NULL,
    ALTER COLUMN token SET NOT NULL,
    ALTER COLUMN locale SET NOT NULL,
    ALTER COLUMN timezone SET NOT NULL;

COMMENT ON COLUMN zones.platform IS 'copy of devices.platform (trigger zones_device_copy)';
COMMENT ON COLUMN zones.token IS 'copy of devices.token (trigger zones_device_copy)';
COMMENT ON COLUMN zones.token_disabled_at IS
    'copy of devices.token_disabled_at (trigger zones_device_copy)';
COMMENT ON COLUMN zones.locale IS 'copy of devices.locale (trigger zones_device_copy)';
COMMENT ON COLUMN zones.timezone IS 'copy of devices.timezone (trigger zones_device_copy)';
COMMENT ON COLUMN zones.categories IS 'copy of devices.categories (trigger zones_device_copy)';
COMMENT ON COLUMN zones.quiet_start IS 'copy of devices.quiet_start (trigger zones_device_copy)';
COMMENT ON COLUMN zones.quiet_end IS 'copy of devices.quiet_end (trigger zones_device_copy)';

CREATE FUNCTION geopush_zone_device_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT d.platform, d.token, d.token_disabled_at, d.locale, d.timezone, d.categories,
           d.quiet_start, d.quiet_end
      INTO NEW.platform, NEW.token, NEW.token_disabled_at, NEW.locale, NEW.timezone,
           NEW.categories, NEW.quiet_start, NEW.quiet_end
      FROM devices d
     WHERE d.id = NEW.device_id
       FOR SHARE;
    IF NOT FOUND THEN
        -- What the foreign key would say (it is checked after this trigger).
        RAISE foreign_key_violation USING
            MESSAGE = format('zone of device %s, which does not exist', NEW.device_id),
            TABLE = 'zones', CONSTRAINT = 'zones_device_id_fkey';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER zones_device_copy
    BEFORE INSERT OR UPDATE OF device_id ON zones
    FOR EACH ROW EXECUTE FUNCTION geopush_zone_device_copy();

CREATE FUNCTION geopush_device_zone_copies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE zones
       SET platform = NEW.platform, token = NEW.token,
           token_disabled_at = NEW.token_disabled_at, locale = NEW.locale,
           timezone = NEW.timezone, categories = NEW.categories,
           quiet_start = NEW.quiet_start, quiet_end = NEW.quiet_end
     WHERE device_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_zone_copies
    AFTER UPDATE OF platform, token, token_disabled_at, locale, timezone, categories,
                    quiet_start, quiet_end ON devices
    FOR EACH ROW
    WHEN ((OLD.platform, OLD.token, OLD.token_disabled_at, OLD.locale, OLD.timezone,
           OLD.categories, OLD.quiet_start, OLD.quiet_end)
          IS DISTINCT FROM
          (NEW.platform, NEW.token, NEW.token_disabled_at, NEW.locale, NEW.timezone,
           NEW.categories, NEW.quiet_start, NEW.quiet_end))
    EXECUTE FUNCTION geopush_device_zone_copies();

-- 0009's covering index served the join this replaces; the near-me half of the match
-- (a few devices) and every other lookup by id use the primary key.
DROP INDEX devices_match;
