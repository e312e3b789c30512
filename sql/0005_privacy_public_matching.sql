-- Privacy and abuse (issue 12): matching on public data only, tokens unique per platform.

-- What neighbours are matched against: the public point for a point incident, the
-- area's bounding box widened outwards to the public point's 0.001° grid for an area.
-- Never the exact geometry, so who is alerted tells no more than the push does.
CREATE FUNCTION geopush_public_geom(exact geometry, public_point geometry)
RETURNS geometry LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN GeometryType(exact) = 'POINT' THEN public_point
    ELSE ST_MakeEnvelope(
        -- numeric: the float's shortest decimal, so a grid line stays on the grid
        (floor(ST_XMin(exact)::numeric * 1000) / 1000)::float8,
        (floor(ST_YMin(exact)::numeric * 1000) / 1000)::float8,
        (greatest(ceil(ST_XMax(exact)::numeric * 1000),
                  floor(ST_XMin(exact)::numeric * 1000) + 1) / 1000)::float8,
        (greatest(ceil(ST_YMax(exact)::numeric * 1000),
                  floor(ST_YMin(exact)::numeric * 1000) + 1) / 1000)::float8,
        4326) END
$$;

ALTER TABLE incidents ADD COLUMN public_geom geometry(Geometry, 4326);
UPDATE incidents SET public_geom = geopush_public_geom(geom, public_point);
ALTER TABLE incidents ALTER COLUMN public_geom SET NOT NULL;

-- Every writer of an exact geometry gets its public one with it, whatever statement
-- it uses. The purge (geom := public_geom, exact_purged_at set) leaves it alone.
CREATE FUNCTION geopush_set_public_geom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.public_geom := geopush_public_geom(NEW.geom, NEW.public_point);
    RETURN NEW;
END
$$;
CREATE TRIGGER incidents_public_geom
    BEFORE INSERT OR UPDATE OF geom, public_point ON incidents
    FOR EACH ROW WHEN (NEW.exact_purged_at IS NULL)
    EXECUTE FUNCTION geopush_set_public_geom();

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
