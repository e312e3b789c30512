-- deliveries_device (device_id) is a prefix of deliveries_device_recent (device_id,
-- created_at DESC, from 0003), which serves every lookup by device (the feed, erasure,
-- ON DELETE SET NULL). One index less to maintain on the table every push writes to.
DROP INDEX IF EXISTS deliveries_device;
