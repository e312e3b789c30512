"""GeoJSON geometries the API answers with (RFC 7946), typed so the OpenAPI document
describes them: positions are [longitude, latitude]."""

from __future__ import annotations

from typing import Literal

import msgspec

Position = list[float]


class Polygon(msgspec.Struct, frozen=True):
    type: Literal["Polygon"]
    coordinates: list[list[Position]]


class MultiPolygon(msgspec.Struct, frozen=True):
    type: Literal["MultiPolygon"]
    coordinates: list[list[list[Position]]]
