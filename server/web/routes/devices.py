"""Phone users' API: register a device, its zones, preferences and token."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from server import keys
from server.domain import zones as zone_rules
from server.domain.agency_spec import valid_timezone
from server.domain.categories import NEIGHBOUR_ALERTABLE, RESPONDER_ONLY
from server.domain.credentials import new_device_secret
from server.domain.errors import FieldError, ValidationFailed
from server.domain.pushtext import title_and_body
from server.domain.responses import ResponseStatus
from server.domain.text import SINGLE_LINE, Line
from server.domain.tokens import token_problem
from server.settings import Settings
from server.store import answers, neighbourhoods, positions
from server.store import devices as store
from server.store.erasure import scrub_device
from server.web.appkeys import LIMITER, POOL, REDIS, REGISTRATION_CHECK, SETTINGS
from server.web.auth import bearer
from server.web.client import limit_bucket, request_address
from server.web.openapi import Query, doc
from server.web.problems import Problem, Unauthorized
from server.web.registration import Registration, RegistrationRefused
from server.web.routes.body import decode_json, json_response

routes = web.RouteTableDef()

SUBSCRIBABLE = NEIGHBOUR_ALERTABLE | RESPONDER_ONLY
_LOCALE = re.compile(r"^[a-zA-Z]{2,3}(?:[-_][a-zA-Z0-9]{2,8})*$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


# Request bodies refuse fields they don't know (a typo must not silently do nothing)
# and text with NUL, CR or LF.


class DeviceCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    platform: Literal["apns", "fcm"]
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    timezone: Annotated[str, msgspec.Meta(max_length=64, pattern=SINGLE_LINE)] = "UTC"
    locale: Annotated[str, msgspec.Meta(max_length=35)] = "en"


class DeviceCreated(msgspec.Struct, frozen=True):
    id: str
    secret: str


class Center(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lat: float
    lon: float


class ZoneIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Shown in the app; no control characters (PostgreSQL text can't even hold NUL).
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100,
                                      pattern=r"^[^\x00-\x1f\x7f]+\Z")]
    center: Center | None = None
    radius_m: float | None = None
    geometry: dict[str, Any] | None = None
    neighbourhood: str | None = None    # an imported neighbourhood's id


class ZonesPut(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    zones: list[ZoneIn]


class QuietHours(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start: Line
    end: Line


class NearMe(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    radius_m: Annotated[int, msgspec.Meta(ge=zone_rules.MIN_NEAR_ME_RADIUS_M,
                                          le=zone_rules.MAX_NEAR_ME_RADIUS_M)]


class PreferencesPut(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    categories: list[Line] | None = None
    # Alerts around where the phone is now (PUT .../location); null: off.
    near_me: NearMe | None = None
    quiet_hours: QuietHours | None = None
    responder: bool = False
    timezone: Line | None = None   # IANA name; quiet hours are in this zone
    locale: Annotated[str, msgspec.Meta(max_length=35)] | None = None


class LocationPut(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


class AlertLocation(msgspec.Struct, frozen=True):
    public: str | None   # the public location text
    lat: float           # the public point, rounded to about 100 m
    lon: float


class AlertItem(msgspec.Struct, frozen=True):
    incident_id: str
    category: str
    status: str
    title: str
    occurred_at: str
    alerted_at: str
    location: AlertLocation


class AlertFeed(msgspec.Struct, frozen=True):
    alerts: list[AlertItem]
    next: str | None


class ZonesSaved(msgspec.Struct, frozen=True):
    zones: int


class PreferencesSaved(msgspec.Struct, frozen=True):
    categories: list[str] | None
    responder: bool
    near_me: NearMe | None = None


class ResponsePost(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: ResponseStatus


class ResponseRecorded(msgspec.Struct, frozen=True):
    incident_id: str
    status: ResponseStatus


class TokenPut(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


def _check_token(platform: str, token: str, field: str = "token") -> None:
    problem = token_problem(platform, token)
    if problem is not None:
        raise ValidationFailed([FieldError(field, problem)])


def _token_gone() -> ValidationFailed:
    return ValidationFailed([FieldError(
        "token", "was reported gone by the push gateway and can't be registered again; "
                 "send the new token the operating system gives the app")])


async def _limit_registrations(request: web.Request) -> str:
    """The client's address, once its registration budget allows one more (429 if not)."""
    settings = request.app[SETTINGS]
    address = request_address(request)
    per_hour = settings.device_registrations_per_hour_per_ip
    if per_hour > 0:
        verdict = await request.app[LIMITER].allow(
            keys.registration_rate(limit_bucket(address)), per_hour, 3600)
        if not verdict.allowed:
            raise Problem(429, "Too many requests",
                          f"At most {per_hour} device registrations an hour from one address",
                          slug="rate-limited",
                          headers={"Retry-After": str(verdict.retry_after_s)})
    return address


async def _device(request: web.Request) -> store.Device:
    device = await store.authenticate(
        request.app[POOL], request.match_info["device"], bearer(request)
    )
    if device is None:
        raise Unauthorized("Unknown device or wrong secret")
    return device


@routes.post("/v1/devices")
@doc("Register a device (its secret is shown once)", "devices", request=DeviceCreate,
     responses={201: DeviceCreated}, errors=(413, 422))
async def post_device(request: web.Request) -> web.Response:
    # Every attempt counts, malformed ones too: the budget bounds what one address can
    # try, not only what it achieves.
    address = await _limit_registrations(request)
    body = await decode_json(request, DeviceCreate)
    errors = []
    if not valid_timezone(body.timezone):
        errors.append(FieldError("timezone", f"{body.timezone!r} is not an IANA time zone"))
    if not _LOCALE.match(body.locale):
        errors.append(FieldError("locale", "must be a language tag like 'en' or 'es-US'"))
    if errors:
        raise ValidationFailed(errors)
    _check_token(body.platform, body.token)
    check = request.app[REGISTRATION_CHECK]
    if check is not None:
        try:
            await check(Registration(body.platform, body.token, address, request.headers))
        except RegistrationRefused as exc:
            raise Problem(exc.status, "Registration refused", exc.detail,
                          slug="registration-refused") from None
    secret = new_device_secret()
    try:
        device_id = await store.create_device(
            request.app[POOL], platform=body.platform, token=body.token,
            timezone=body.timezone, locale=body.locale, secret=secret,
        )
    except store.TokenGone:
        raise _token_gone() from None
    return json_response(DeviceCreated(device_id, secret), status=201)


def _zone(index: int, z: ZoneIn) -> zone_rules.Zone:
    field = f"zones[{index}]"
    shapes = sum(x is not None for x in (z.geometry, z.center or z.radius_m, z.neighbourhood))
    if shapes > 1:
        raise zone_rules.ZoneError(
            field, "give one of: center and radius_m, geometry, or neighbourhood")
    if z.neighbourhood is not None:
        return zone_rules.NeighbourhoodZone(z.name, z.neighbourhood)
    if z.geometry is not None:
        return zone_rules.area(field, z.name, z.geometry)
    if z.center is None:
        raise zone_rules.ZoneError(f"{field}.center",
                                   "is required (or give a geometry or a neighbourhood)")
    if z.radius_m is None:
        raise zone_rules.ZoneError(f"{field}.radius_m", "is required with center")
    return zone_rules.circle(field, z.name, z.center.lat, z.center.lon, z.radius_m)


@routes.put("/v1/devices/{device}/zones")
@doc("Replace the device's zones", "devices", auth="device", request=ZonesPut,
     responses={200: ZonesSaved}, errors=(401, 413, 422))
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
    wanted = [z.neighbourhood_id for z in parsed if isinstance(z, zone_rules.NeighbourhoodZone)]
    if wanted:
        known = await neighbourhoods.existing(request.app[POOL], wanted)
        errors.extend(
            FieldError(f"zones[{i}].neighbourhood", "is not an imported neighbourhood's id")
            for i, z in enumerate(body.zones)
            if z.neighbourhood is not None and z.neighbourhood not in known)
    if errors:
        raise ValidationFailed(errors)
    await store.replace_zones(request.app[POOL], device.id, parsed)
    return json_response(ZonesSaved(len(parsed)))


def _time(field: str, value: str) -> dt.time:
    m = _HHMM.match(value)
    if not m:
        raise ValidationFailed([FieldError(field, "must be HH:MM (24-hour)")])
    return dt.time(int(m.group(1)), int(m.group(2)))


@routes.put("/v1/devices/{device}/preferences")
@doc("Categories, quiet hours, responder mode, time zone and locale", "devices",
     auth="device", request=PreferencesPut, responses={200: PreferencesSaved},
     errors=(401, 413, 422))
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
    errors = []
    if body.timezone is not None and not valid_timezone(body.timezone):
        errors.append(FieldError("timezone", f"{body.timezone!r} is not an IANA time zone"))
    if body.locale is not None and not _LOCALE.match(body.locale):
        errors.append(FieldError("locale", "must be a language tag like 'en' or 'es-US'"))
    if errors:
        raise ValidationFailed(errors)
    start = end = None
    if body.quiet_hours is not None:
        start = _time("quiet_hours.start", body.quiet_hours.start)
        end = _time("quiet_hours.end", body.quiet_hours.end)
    near_me = body.near_me.radius_m if body.near_me is not None else None
    await store.set_preferences(
        request.app[POOL], device.id, categories=categories, quiet_start=start, quiet_end=end,
        responder=body.responder, near_me_radius_m=near_me,
    )
    if body.timezone is not None or body.locale is not None:
        await store.update_profile(request.app[POOL], device.id, timezone=body.timezone,
                                   locale=body.locale)
    # A position nothing uses any more is forgotten at once.
    if not body.responder:
        await positions.RESPONDERS.forget(request.app[REDIS], [device.id])
    if near_me is None:
        await _near_me(request.app[SETTINGS]).forget(request.app[REDIS], [device.id])
    else:   # a position already reported is searched for as far as the new radius
        await _near_me(request.app[SETTINGS]).move(request.app[REDIS], device.id, near_me)
    return json_response(PreferencesSaved(categories, body.responder,
                                          NearMe(near_me) if near_me else None))


def _near_me(settings: Settings) -> positions.NearMePositions:
    return positions.near_me(settings.location_ttl.total_seconds())


@routes.put("/v1/devices/{device}/token")
@doc("Rotate the push token", "devices", auth="device", request=TokenPut,
     responses={204: None}, errors=(401, 413, 422))
async def put_token(request: web.Request) -> web.Response:
    device = await _device(request)
    body = await decode_json(request, TokenPut)
    _check_token(device.platform, body.token)
    try:
        await store.set_token(request.app[POOL], device.id, device.platform, body.token)
    except store.TokenGone:
        raise _token_gone() from None
    return web.Response(status=204)


@routes.put("/v1/devices/{device}/location")
@doc("Where the phone is now (near me; responders): kept in Redis only, then forgotten",
     "devices", auth="device",
     request=LocationPut, responses={204: None}, errors=(401, 409, 413, 422))
async def put_location(request: web.Request) -> web.Response:
    """The phone's current position, for "near me" alerts (kept in Redis only,
    forgotten GEOPUSH_LOCATION_TTL_MINUTES after the last report) and, for a CPR
    responder, cardiac arrests nearby (forgotten after 15 minutes)."""
    device = await _device(request)
    body = await decode_json(request, LocationPut)
    reach = await store.reach(request.app[POOL], device.id)
    if not reach.responder and reach.near_me_radius_m is None:
        # Nothing would use the position: it is not kept.
        raise Problem(409, "No use for a position",
                      "Set near_me (or responder: true) in the preferences before "
                      "reporting a position", slug="position-unused")
    if reach.near_me_radius_m is not None:
        await _near_me(request.app[SETTINGS]).report(request.app[REDIS], device.id,
                                                     body.lat, body.lon,
                                                     radius_m=reach.near_me_radius_m)
    if reach.responder:
        await positions.RESPONDERS.report(request.app[REDIS], device.id, body.lat, body.lon)
    return web.Response(status=204)


@routes.post("/v1/devices/{device}/alerts/{incident}/response")
@doc("A CPR responder's answer to an alert it received", "devices", auth="device",
     request=ResponsePost, responses={200: ResponseRecorded},
     errors=(401, 403, 413, 422))
async def post_response(request: web.Request) -> web.Response:
    """A CPR responder's answer to the alert it received: responding, on_scene or
    declined (the latest answer counts). 403 unless this device was alerted to it."""
    device = await _device(request)
    body = await decode_json(request, ResponsePost)
    try:
        incident_id = str(uuid.UUID(request.match_info["incident"]))
    except ValueError:
        raise Problem(403, "Not alerted", "This device was not alerted to that incident",
                      slug="not-alerted") from None
    if not await answers.record_answer(request.app[POOL], device.id, incident_id, body.status):
        raise Problem(403, "Not alerted",
                      "This device was not alerted to that incident as a responder",
                      slug="not-alerted")
    return json_response(ResponseRecorded(incident_id, body.status))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _cursor(raw: str | None) -> tuple[dt.datetime, str] | None:
    if not raw:
        return None
    try:
        micros, _, incident = raw.partition("_")
        stamp = _EPOCH + dt.timedelta(microseconds=int(micros))
        return stamp, str(uuid.UUID(incident))
    except (ValueError, OverflowError, OSError):
        raise ValidationFailed([FieldError("before", "is not a cursor from a previous page")]) \
            from None


@routes.get("/v1/devices/{device}/alerts")
@doc("The device's alerts of the last 24 hours, newest first", "devices", auth="device",
     responses={200: AlertFeed}, errors=(401, 422),
     query=(Query("limit", "1-100, default 20",
                  {"type": "integer", "minimum": 1, "maximum": 100}),
            Query("before", "the previous page's next")))
async def get_alerts(request: web.Request) -> web.Response:
    """The device's alerts of the last 24 hours with their current status, newest first.
    ``?limit=`` (1-100, default 20) and ``?before=`` (the previous page's ``next``)."""
    device = await _device(request)
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise ValidationFailed([FieldError("limit", "must be an integer from 1 to 100")])
    now = dt.datetime.now(dt.UTC)
    rows = await store.recent_alerts(request.app[POOL], device.id, now=now, limit=limit,
                                     before=_cursor(request.query.get("before")))
    items = []
    for r in rows:
        title, _ = title_and_body(r["category"], r["public_location"], r["occurred_at"], now,
                                  device.locale)
        items.append(AlertItem(
            incident_id=str(r["id"]), category=r["category"], status=r["status"], title=title,
            occurred_at=r["occurred_at"].isoformat(), alerted_at=r["alerted_at"].isoformat(),
            location=AlertLocation(r["public_location"], r["lat"], r["lon"]),
        ))
    next_cursor = None
    if len(rows) == limit:
        last = rows[-1]
        # URL-safe: microseconds since the epoch, then the incident id.
        micros = (last["alerted_at"] - _EPOCH) // dt.timedelta(microseconds=1)
        next_cursor = f"{micros}_{last['id']}"
    return json_response(AlertFeed(items, next_cursor))


@routes.delete("/v1/devices/{device}")
@doc("Erase the device and everything about it", "devices", auth="device",
     responses={204: None}, errors=(401,))
async def delete_device(request: web.Request) -> web.Response:
    """Erase the device: its row, zones, preferences, position and every Redis key or
    pending push about it. Delivery records stay, unlinked, for incident statistics."""
    device = await _device(request)
    await store.delete_device(request.app[POOL], device.id)
    await scrub_device(request.app[REDIS], device.id,
                       request.app[SETTINGS].push_stream_shards)
    return web.Response(status=204)
