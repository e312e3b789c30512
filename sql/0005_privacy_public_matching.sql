-- Privacy and abuse (issue 12): matching on public data only, tokens unique per platform.

-- What neighbours are matched against: the public point for a point incident, the
-- area widened to the public 0.001° grid for an area (server/domain/privacy.py,
-- public_area). Never the exact geometry, so who is alerted tells no more than the push.
ALTER TABLE incidents ADD COLUMN public_geom geometry(Geometry, 4326);
UPDATE incidents
   SET public_geom = CASE
       WHEN GeometryType(geom) = 'POINT' THEN public_point
       ELSE ST_MakeEnvelope(floor(ST_XMin(geom) * 1000) / 1000, floor(ST_YMin(geom) * 1000) / 1000,
                            greatest(ceil(ST_XMax(geom) * 1000), floor(ST_XMin(geom) * 1000) + 1) / 1000,
                            greatest(ceil(ST_YMax(geom) * 1000), floor(ST_YMin(geom) * 1000) + 1) / 1000,
                            4326)
   END;
ALTER TABLE incidents ALTER COLUMN public_geom SET NOT NULL;

-- The narrative travels to review_items only; it was never a column of incidents.

-- One live device per push token and platform: registering a token another device
-- holds moves it there, the old holder disabled with reason 'replaced'.
WITH ranked AS (
    SELECT id, row_number() OVER (PARTITION BY platform, token
                                  ORDER BY created_at DESC, id) AS n
      FROM devices
     WHERE token_disabled_at IS NULL)
UPDATE devices d
   SET token_disabled_at = now(), token_disabled_reason = 'replaced'
  FROM ranked r
 WHERE r.id = d.id AND r.n > 1;
CREATE UNIQUE INDEX devices_live_token ON devices (platform, token)
    WHERE token_disabled_at IS NULL;
