"""Phone users' API: register a device, its zones, preferences and token."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from server.appkeys import POOL
from server.auth import bearer, new_device_secret
from server.domain import zones as zone_rules
from server.domain.agency_spec import valid_timezone
from server.domain.categories import NEIGHBOUR_ALERTABLE, RESPONDER_ONLY
from server.errors import FieldError, Unauthorized, ValidationFailed
from server.routes.body import decode_json, json_response
from server.store import devices as store

routes = web.RouteTableDef()

SUBSCRIBABLE = NEIGHBOUR_ALERTABLE | RESPONDER_ONLY
_APNS_TOKEN = re.compile(r"^[0-9a-fA-F]{64,200}$")
_FCM_TOKEN = re.compile(r"^[\x21-\x7e]{1,4096}$")
_LOCALE = re.compile(r"^[a-zA-Z]{2,3}(?:[-_][a-zA-Z0-9]{2,8})*$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class DeviceCreate(msgspec.Struct, frozen=True):
    platform: Literal["apns", "fcm"]
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    timezone: str = "UTC"
    locale: Annotated[str, msgspec.Meta(max_length=35)] = "en"


class DeviceCreated(msgspec.Struct, frozen=True):
    id: str
    secret: str


class Center(msgspec.Struct, frozen=True):
    lat: float
    lon: float


class ZoneIn(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    center: Center | None = None
    radius_m: float | None = None
    geometry: dict[str, Any] | None = None


class ZonesPut(msgspec.Struct, frozen=True):
    zones: list[ZoneIn]


class QuietHours(msgspec.Struct, frozen=True):
    start: str
    end: str


class PreferencesPut(msgspec.Struct, frozen=True):
    categories: list[str] | None = None
    quiet_hours: QuietHours | None = None
    responder: bool = False


class TokenPut(msgspec.Struct, frozen=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


def _check_token(platform: str, token: str, field: str = "token") -> None:
    pattern = _APNS_TOKEN if platform == "apns" else _FCM_TOKEN
    if not pattern.match(token):
        what = "64+ hex characters" if platform == "apns" else "printable, without spaces"
        raise ValidationFailed([FieldError(field, f"is not a valid {platform} token ({what})")])


async def _device(request: web.Request) -> store.Device:
    device = await store.authenticate(
        request.app[POOL], request.match_info["device"], bearer(request)
    )
    if device is None:
        raise Unauthorized("Unknown device or wrong secret")
    return device


@routes.post("/v1/devices")
async def post_device(request: web.Request) -> web.Response:
    body = await decode_json(request, DeviceCreate)
    errors = []
    if not valid_timezone(body.timezone):
        errors.append(FieldError("timezone", f"{body.timezone!r} is not an IANA time zone"))
    if not _LOCALE.match(body.locale):
        errors.append(FieldError("locale", "must be a language tag like 'en' or 'es-US'"))
    if errors:
        raise ValidationFailed(errors)
    _check_token(body.platform, body.token)
    secret = new_device_secret()
    device_id = await store.create_device(
        request.app[POOL], platform=body.platform, token=body.token,
        timezone=body.timezone, locale=body.locale, secret=secret,
    )
    return json_response(DeviceCreated(device_id, secret), status=201)


def _zone(index: int, z: ZoneIn) -> zone_rules.Zone:
    field = f"zones[{index}]"
    if z.geometry is not None and (z.center is not None or z.radius_m is not None):
        raise zone_rules.ZoneError(field, "give either center and radius_m, or geometry")
    if z.geometry is not None:
        return zone_rules.area(field, z.name, z.geometry)
    if z.center is None:
        raise zone_rules.ZoneError(f"{field}.center", "is required (or give a geometry)")
    if z.radius_m is None:
        raise zone_rules.ZoneError(f"{field}.radius_m", "is required with center")
    return zone_rules.circle(field, z.name, z.center.lat, z.center.lon, z.radius_m)


@routes.put("/v1/devices/{device}/zones")
async def put_zones(request: web.Request) -> web.Response:
    device = await _device(request)
    body = await decode_json(request, ZonesPut, limit=1024 * 1024)
    if len(body.zones) > zone_rules.MAX_ZONES:
        raise ValidationFailed([FieldError("zones", f"at most {zone_rules.MAX_ZONES} zones")])
    parsed: list[zone_rules.Zone] = []
    errors: list[FieldError] = []
    for i, z in enumerate(body.zones):
        try:
            parsed.append(_zone(i, z))
        except zone_rules.ZoneError as exc:
            errors.append(exc.error)
    if errors:
        raise ValidationFailed(errors)
    await store.replace_zones(request.app[POOL], device.id, parsed)
    return json_response({"zones": len(parsed)})


def _time(field: str, value: str) -> dt.time:
    m = _HHMM.match(value)
    if not m:
        raise ValidationFailed([FieldError(field, "must be HH:MM (24-hour)")])
    return dt.time(int(m.group(1)), int(m.group(2)))


@routes.put("/v1/devices/{device}/preferences")
async def put_preferences(request: web.Request) -> web.Response:
    device = await _device(request)
    body = await decode_json(request, PreferencesPut)
    categories = None
    if body.categories is not None:
        unknown = sorted(set(body.categories) - SUBSCRIBABLE)
        if unknown:
            raise ValidationFailed([FieldError(
                "categories",
                f"unknown {', '.join(unknown)}; valid: {', '.join(sorted(SUBSCRIBABLE))}",
            )])
        categories = sorted(set(body.categories))
    start = end = None
    if body.quiet_hours is not None:
        start = _time("quiet_hours.start", body.quiet_hours.start)
        end = _time("quiet_hours.end", body.quiet_hours.end)
    await store.set_preferences(
        request.app[POOL], device.id, categories=categories, quiet_start=start, quiet_end=end,
        responder=body.responder,
    )
    return json_response({"categories": categories, "responder": body.responder})


@routes.put("/v1/devices/{device}/token")
async def put_token(request: web.Request) -> web.Response:
    device = await _device(request)
    body = await decode_json(request, TokenPut)
    _check_token(device.platform, body.token)
    await store.set_token(request.app[POOL], device.id, body.token)
    return web.Response(status=204)
