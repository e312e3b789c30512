from __future__ import annotations

import json
from typing import Any

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import shape

from server.domain.zones import (
    MAX_VERTICES,
    MIN_AREA_M2,
    Area,
    ZoneError,
    area,
    circle,
    geodesic_area_km2,
)


def square(lon: float, lat: float, d: float) -> dict[str, Any]:
    ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


def test_valid_polygon_becomes_a_multipolygon() -> None:
    zone = area("zones[0]", "Ravenna", square(-122.31, 47.66, 0.01))
    geom = shape(json.loads(zone.geojson))
    assert geom.geom_type == "MultiPolygon" and geom.is_valid


def test_self_intersection_says_where() -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    with pytest.raises(ZoneError) as err:
        area("zones[0]", "x", bowtie)
    assert err.value.error.field == "zones[0].geometry.coordinates"
    assert "Self-intersection[0.5 0.5]" in err.value.error.message


def test_too_many_vertices_too_large_and_antimeridian_are_refused() -> None:
    import math

    ring = [[-122.3 + 0.01 * math.cos(i / 2100 * 2 * math.pi),
             47.6 + 0.01 * math.sin(i / 2100 * 2 * math.pi)] for i in range(2100)]
    ring.append(ring[0])
    with pytest.raises(ZoneError, match=f"at most {MAX_VERTICES}"):
        area("z", "x", {"type": "Polygon", "coordinates": [ring]})
    with pytest.raises(ZoneError, match="km²"):
        area("z", "x", square(-122.9, 47.2, 0.5))  # ~2,000 km²
    with pytest.raises(ZoneError, match="antimeridian"):
        area("z", "x", {"type": "Polygon",
                        "coordinates": [[[179.9, 0], [-179.9, 0], [-179.9, 1], [179.9, 1],
                                         [179.9, 0]]]})


def test_circle_radius_bounds() -> None:
    assert circle("z", "x", 47.6, -122.3, 150).radius_m == 150
    for bad in (149.9, 100, 20_001, float("nan"), "5", True):
        with pytest.raises(ZoneError) as err:
            circle("z", "x", 47.6, -122.3, bad)
        assert err.value.error.field == "z.radius_m"
    with pytest.raises(ZoneError) as err:
        circle("z", "x", 91, -122.3, 500)
    assert err.value.error.field == "z.center.lat"


coordinate = st.floats(allow_nan=True, allow_infinity=True, width=32)
position = st.lists(coordinate, min_size=0, max_size=3)
ring = st.lists(position, min_size=0, max_size=12)
geojson = st.one_of(
    st.fixed_dictionaries({"type": st.just("Polygon"),
                           "coordinates": st.lists(ring, max_size=3)}),
    st.fixed_dictionaries({"type": st.just("MultiPolygon"),
                           "coordinates": st.lists(st.lists(ring, max_size=2), max_size=3)}),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.none(), st.integers(), st.text(max_size=10),
)


@settings(max_examples=300)
@given(geojson)
def test_random_geojson_is_accepted_valid_or_refused_with_a_field(geometry: Any) -> None:
    try:
        zone = area("zones[0]", "x", geometry)
    except ZoneError as exc:
        assert exc.error.field.startswith("zones[0].geometry")
        return
    assert isinstance(zone, Area)
    stored = shapely.from_geojson(zone.geojson)
    assert stored.is_valid and not stored.is_empty


small = st.floats(min_value=-0.05, max_value=0.05)


@settings(max_examples=200)
@given(st.lists(st.tuples(small, small), min_size=3, max_size=10))
def test_random_closed_rings_near_seattle(points: list[tuple[float, float]]) -> None:
    coords = [[-122.3 + x, 47.6 + y] for x, y in points]
    coords.append(coords[0])
    try:
        zone = area("z", "x", {"type": "Polygon", "coordinates": [coords]})
    except ZoneError as exc:
        assert exc.error.field.startswith("z.geometry")
        return
    assert shapely.from_geojson(zone.geojson).is_valid


def test_a_square_around_one_house_is_refused_naming_the_zone() -> None:
    """The issue's 6 m square: too small to be anyone's neighbourhood."""
    with pytest.raises(ZoneError) as err:
        area("zones[2]", "Next door", square(-122.30195, 47.66707, 0.00006))
    assert err.value.error.field == "zones[2].geometry"
    assert "'Next door'" in err.value.error.message
    assert "150 m circle" in err.value.error.message


def test_a_polygon_as_large_as_a_150_m_circle_is_accepted() -> None:
    import math

    # A square of side sqrt(pi) * 150 m, a little over the minimum, at 47.6°N.
    side_m = math.sqrt(MIN_AREA_M2) * 1.01
    dlat = side_m / 111_195
    dlon = dlat / math.cos(math.radians(47.6))
    ring = [[-122.3, 47.6], [-122.3 + dlon, 47.6], [-122.3 + dlon, 47.6 + dlat],
            [-122.3, 47.6 + dlat], [-122.3, 47.6]]
    area("z", "x", {"type": "Polygon", "coordinates": [ring]})


@settings(max_examples=200)
@given(st.floats(-122.5, -122.2), st.floats(47.4, 47.8), st.floats(0.00001, 0.01),
       st.floats(0.00001, 0.01))
def test_no_accepted_zone_is_smaller_than_a_150_m_circle(lon: float, lat: float, w: float,
                                                         h: float) -> None:
    ring = [[lon, lat], [lon + w, lat], [lon + w, lat + h], [lon, lat + h], [lon, lat]]
    try:
        zone = area("z", "x", {"type": "Polygon", "coordinates": [ring]})
    except ZoneError as exc:
        assert "150 m circle" in exc.error.message
        return
    assert geodesic_area_km2(shape(json.loads(zone.geojson))) * 1e6 >= MIN_AREA_M2
