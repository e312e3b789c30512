"""The normalized incident: what every input format is turned into.

It carries no caller, patient or narrative data and no street address as sent:
parsers drop those, and the public location is built before it gets here. The
redacted narrative rides along only as far as the editor's review queue.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    ACTIVE = "active"
    CLEARED = "cleared"
    CANCELLED = "cancelled"


class LocationKind(StrEnum):
    PUBLIC = "public"
    RESIDENCE = "residence"


@dataclass(frozen=True)
class Point:
    lat: float
    lon: float

    def wkt(self) -> str:
        return f"POINT({self.lon!r} {self.lat!r})"


@dataclass(frozen=True)
class Incident:
    agency_id: str
    external_id: str
    revision: dt.datetime          # the CAD's updated_at: orders revisions
    status: Status
    call_type: str
    category: str
    occurred_at: dt.datetime
    geometry_wkt: str              # exact geometry (point or area), EPSG:4326, lon/lat
    public_point: Point            # rounded, safe to publish
    public_location: str | None    # generalized ("5300 block of 24th Ave NE")
    location_kind: LocationKind | None
    priority: int | None = None
    actual: bool = True            # False: a test/exercise message, never pushed
    narrative: str | None = None   # redacted; kept only while an editor reviews it


@dataclass(frozen=True)
class RawIncident:
    """What a format parser extracts, before the agency's map and privacy rules apply."""

    external_id: str
    revision: dt.datetime
    status: Status
    call_type: str
    occurred_at: dt.datetime
    point: Point                   # exact centre
    geometry_wkt: str | None       # an area, when the source gives one
    address: str | None
    location_kind: LocationKind | None
    priority: int | None
    # False for CAP Test/Exercise/Draft/System messages and the like: stored, never
    # pushed to the public.
    actual: bool = True
    # Free text from the dispatcher. Only ever kept (redacted) for an editor's review;
    # never pushed, never logged.
    narrative: str | None = None
