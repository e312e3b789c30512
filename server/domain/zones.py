"""Validating the places a device watches (pure; shapely, no database).

Circles are kept as centre + radius here and buffered into polygons on the geography
when written (so matching is a GiST-indexed polygon test, never a per-row distance).
Polygons must be valid, small and simple enough to match quickly.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.validation import explain_validity

from server.domain.errors import FieldError

# Every zone, of any shape, covers at least the area of a 150 m circle: a smaller one
# (a square around one house) would tell its owner which side of a street the public
# point lies on, and a grid of them more than the push says.
MIN_RADIUS_M = 150
MIN_AREA_M2 = math.pi * MIN_RADIUS_M**2
MAX_RADIUS_M = 20_000
MAX_VERTICES = 2_000
MAX_AREA_KM2 = 1_000.0
MAX_ZONES = 10
# "Near me": the radius around the phone's current position.
MIN_NEAR_ME_RADIUS_M = 300
MAX_NEAR_ME_RADIUS_M = 5000
_EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class Circle:
    name: str
    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True)
class Area:
    name: str
    geojson: str   # a valid MultiPolygon, lon/lat


@dataclass(frozen=True)
class NeighbourhoodZone:
    """An imported neighbourhood, by its id: the zone is its polygon."""

    name: str
    neighbourhood_id: str


Zone = Circle | Area | NeighbourhoodZone


class ZoneError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.error = FieldError(field, message)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_lat_lon(field: str, lat: Any, lon: Any) -> tuple[float, float]:
    for name, value, bound in (("lat", lat, 90), ("lon", lon, 180)):
        if not _is_number(value):
            raise ZoneError(f"{field}.{name}", "must be a number")
        if abs(value) > bound:
            raise ZoneError(f"{field}.{name}", f"must be between -{bound} and {bound}")
    return float(lat), float(lon)


def circle(field: str, name: str, lat: Any, lon: Any, radius_m: Any) -> Circle:
    lat_f, lon_f = _check_lat_lon(f"{field}.center", lat, lon)
    if not _is_number(radius_m):
        raise ZoneError(f"{field}.radius_m", "must be a number")
    if not MIN_RADIUS_M <= radius_m <= MAX_RADIUS_M:
        raise ZoneError(f"{field}.radius_m",
                        f"zone {name!r}: must be between {MIN_RADIUS_M} and {MAX_RADIUS_M} "
                        "metres")
    return Circle(name, lat_f, lon_f, float(radius_m))


def geodesic_area_km2(geom: Polygon | MultiPolygon) -> float:
    """Area on the sphere (good to well under 1% at zone sizes)."""
    polys = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
    total = 0.0
    for poly in polys:
        rings = [poly.exterior, *poly.interiors]
        for i, ring in enumerate(rings):
            coords = list(ring.coords)
            s = 0.0
            for (lon1, lat1), (lon2, lat2) in itertools.pairwise(coords):
                s += math.radians(lon2 - lon1) * (
                    2 + math.sin(math.radians(lat1)) + math.sin(math.radians(lat2))
                )
            a = abs(s) * _EARTH_RADIUS_KM**2 / 2
            total += a if i == 0 else -a
    return total


def _all_finite(coords: Any, depth: int = 0) -> bool:
    """Positions are lists of finite numbers, nested at most four deep (MultiPolygon)."""
    if depth > 4 or not isinstance(coords, list):
        return False
    if coords and not isinstance(coords[0], list):
        return all(_is_number(c) for c in coords)
    return all(_all_finite(c, depth + 1) for c in coords)


def _check_size(field: str, name: str, km2: float) -> None:
    if km2 > MAX_AREA_KM2:
        raise ZoneError(field, f"zone {name!r} covers {km2:,.0f} km²; at most "
                               f"{MAX_AREA_KM2:,.0f} km² is allowed")
    if km2 * 1e6 < MIN_AREA_M2:
        raise ZoneError(field, f"zone {name!r} covers {km2 * 1e6:,.0f} m²; at least "
                               f"{MIN_AREA_M2:,.0f} m² (a {MIN_RADIUS_M} m circle) is required")


def area(field: str, name: str, geometry: Any) -> Area:
    """A GeoJSON Polygon or MultiPolygon, validated; the error says why and where."""
    gfield = f"{field}.geometry"
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        raise ZoneError(f"{gfield}.type", "must be a GeoJSON Polygon or MultiPolygon")
    if not _all_finite(geometry.get("coordinates")):
        raise ZoneError(f"{gfield}.coordinates", "must be nested lists of finite numbers")
    try:
        geom = shape(geometry)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise ZoneError(f"{gfield}.coordinates", f"malformed coordinates: {exc}") from None
    except shapely.errors.ShapelyError as exc:
        raise ZoneError(f"{gfield}.coordinates", f"malformed coordinates: {exc}") from None
    if geom.is_empty:
        raise ZoneError(f"{gfield}.coordinates", "is empty")
    if geom.has_z:
        geom = shapely.force_2d(geom)
    coords = shapely.get_coordinates(geom)
    if not (abs(coords[:, 0]) <= 180).all() or not (abs(coords[:, 1]) <= 90).all():
        raise ZoneError(f"{gfield}.coordinates",
                        "longitude must be within ±180 and latitude within ±90 "
                        "(GeoJSON is lon,lat)")
    if len(coords) > MAX_VERTICES:
        raise ZoneError(f"{gfield}.coordinates",
                        f"has {len(coords)} vertices; at most {MAX_VERTICES} are allowed")
    minx, _, maxx, _ = geom.bounds
    if maxx - minx > 180:
        raise ZoneError(f"{gfield}.coordinates",
                        "crosses the antimeridian; split it into two polygons")
    if not geom.is_valid:
        raise ZoneError(f"{gfield}.coordinates",
                        f"is not a valid polygon: {explain_validity(geom)}")
    _check_size(gfield, name, geodesic_area_km2(geom))
    multi = geom if isinstance(geom, MultiPolygon) else MultiPolygon([geom])
    return Area(name, shapely.to_geojson(multi))
