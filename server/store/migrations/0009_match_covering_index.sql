-- The match joins every zone it finds to its device (server/store/matching.py): at a
-- metro's scale that is tens of thousands of lookups per incident, and each went from
-- the primary key's index to the devices heap. This index carries what the match
-- reads of a device, for the devices that can be pushed to, so the join is an
-- index-only scan: about half the join's time at 1M devices (docs/BENCHMARKS.md,
-- "Streaming matcher"). It costs an index about the size of the table's match columns
-- (~130 MB at 1M devices) and its upkeep on a device's rare writes.
CREATE INDEX devices_match ON devices (id)
    INCLUDE (platform, token, locale, timezone, quiet_start, quiet_end, categories)
    WHERE token_disabled_at IS NULL;
