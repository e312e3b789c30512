"""Public: the imported neighbourhoods a point lies in, and one by id (its polygon),
so an app can offer "my neighbourhood" as a zone."""

from __future__ import annotations

import math

import msgspec
from aiohttp import web

from server.store import neighbourhoods
from server.web.appkeys import POOL
from server.web.geojson import MultiPolygon
from server.web.openapi import Query, doc
from server.web.problems import FieldError, NotFound, ValidationFailed
from server.web.routes.body import json_response

routes = web.RouteTableDef()


class NeighbourhoodView(msgspec.Struct, frozen=True):
    id: str
    name: str
    geometry: MultiPolygon


class NeighbourhoodsAt(msgspec.Struct, frozen=True):
    neighbourhoods: list[NeighbourhoodView]


def _coordinate(request: web.Request, name: str, bound: float) -> float:
    raw = request.query.get(name)
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > bound:
        raise ValidationFailed([FieldError(name, f"must be a number from -{bound:g} to {bound:g}")])
    return value


@routes.get("/v1/neighbourhoods")
@doc("Neighbourhoods containing ?lat=&lon= (smallest first)", "neighbourhoods",
     responses={200: NeighbourhoodsAt},
     errors=(422,),
     query=(Query("lat", "latitude", {"type": "number"}, required=True),
            Query("lon", "longitude", {"type": "number"}, required=True)))
async def get_neighbourhoods(request: web.Request) -> web.Response:
    """``?lat=&lon=``: the neighbourhoods containing that point (smallest first)."""
    lat = _coordinate(request, "lat", 90)
    lon = _coordinate(request, "lon", 180)
    found = await neighbourhoods.containing(request.app[POOL], lat, lon)
    return json_response(NeighbourhoodsAt(msgspec.convert(found, list[NeighbourhoodView])))


@routes.get("/v1/neighbourhoods/{id}")
@doc("One neighbourhood and its polygon", "neighbourhoods",
     responses={200: NeighbourhoodView}, errors=(404,))
async def get_neighbourhood(request: web.Request) -> web.Response:
    found = await neighbourhoods.get(request.app[POOL], request.match_info["id"])
    if found is None:
        raise NotFound(f"No neighbourhood {request.match_info['id']!r}")
    return json_response(msgspec.convert(found, NeighbourhoodView))
