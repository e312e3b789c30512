"""A push waiting to be sent, as it travels on a Redis stream, and its outcomes."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from server.domain.pushtext import title_and_body, update_text
from server.domain.responses import RESPONSE_STATUSES
from server.domain.severity import Presentation, presentation


class Push(msgspec.Struct, frozen=True):
    """On the stream as two fields: ``device_id`` (so erasure can find a device's
    entries without decoding them) and ``push``, this whole struct as JSON: one field
    to parse instead of seventeen, decoded and type-checked by msgspec in C."""

    incident_id: str
    device_id: str
    platform: str
    token: str
    locale: str
    category: str
    public_location: str        # "" when withheld
    lat: float                  # public (rounded) point
    lon: float
    occurred_at: float          # unix seconds
    received_at: float          # when the incident arrived: latency is measured from here
    expires_at: float           # unix seconds: not worth delivering after this
    attempt: int = 1
    title: str = ""             # an editor's wording, when the alert was reviewed
    body: str = ""
    # "neighbour" (zone match) or "responder" (CPR: exact point, nearest AEDs)
    audience: str = "neighbour"
    aeds: str = ""              # JSON list of the nearest AEDs, responders only
    severity: str = ""          # a manual alert's: extreme | severe | moderate
    # An area incident's public area (west, south, east, north): what neighbours were
    # matched against, so the push says all that being alerted tells.
    bbox: tuple[float, float, float, float] | None = None
    # "alert", or "update": the incident ended (``status`` cleared | cancelled, at
    # ``ended_at``, unix s); the update replaces the alert on the phone.
    kind: str = "alert"
    status: str = "active"
    ended_at: float = 0.0

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        return {"device_id": self.device_id, "push": _encode(self).decode()}

    @classmethod
    def from_fields(cls, data: dict[str, str]) -> Push:
        """A stream entry's fields back as a Push; ValueError or KeyError if malformed."""
        encoded = data["push"]
        try:
            return _decode(encoded)
        except msgspec.MsgspecError as exc:
            raise ValueError(f"malformed push: {exc}") from None

    def next_attempt(self) -> Push:
        return msgspec.structs.replace(self, attempt=self.attempt + 1)

    def incident_data(self) -> dict[str, Any]:
        """The custom data both platforms carry: what the app shows about the incident."""
        data: dict[str, Any] = {
            "id": self.incident_id,
            "category": self.category,
            "area": {"lat": self.lat, "lon": self.lon, "location": self.public_location or None},
        }
        if self.severity:
            data["severity"] = self.severity
        if self.bbox is not None:
            data["area"]["bbox"] = list(self.bbox)
        if self.kind == "update":
            data["status"] = self.status
        elif self.audience == "responder":
            data["responder"] = True
            data["aeds"] = json.loads(self.aeds) if self.aeds else []
            data["actions"] = list(RESPONSE_STATUSES)
        return data

    @property
    def ended(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.ended_at, dt.UTC)

    def text(self, now: dt.datetime) -> tuple[str, str]:
        """Title and body in the device's language: the alert's, or the update's."""
        if self.kind == "update":
            return update_text(self.category, self.status, self.occurred, self.ended,
                               self.locale)
        return title_and_body(self.category, self.public_location or None, self.occurred,
                              now, self.locale, title=self.title, body=self.body)

    def presentation(self, *, critical_alerts: bool = False) -> Presentation:
        """How loudly it presents on the phone (``server.domain.severity``)."""
        return presentation(self.category, "update" if self.kind == "update" else "alert",
                            manual_severity=self.severity, critical_alerts=critical_alerts)

    @property
    def occurred(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.occurred_at, dt.UTC)


def push_text_key(push: Push, now: float) -> tuple[Any, ...]:
    """What a push's text and data depend on, but for the device: equal keys, equal
    payloads. The relative time ("3 min ago") changes once a minute."""
    minutes = int((now - push.occurred_at) // 60)
    return (push.incident_id, push.category, push.public_location, push.locale,
            push.title, push.body, push.audience, push.kind, push.status, push.ended_at,
            push.severity, minutes)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Push).decode

V = TypeVar("V")


class PayloadCache(Generic[V]):
    """Encoded payloads of the fan-outs in progress: a handful at a time, so a small
    dict, emptied when it fills (no eviction order needed)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: dict[tuple[Any, ...], V] = {}

    def get(self, key: tuple[Any, ...]) -> V | None:
        return self._items.get(key)

    def put(self, key: tuple[Any, ...], value: V) -> None:
        if len(self._items) >= self._size:
            self._items.clear()
        self._items[key] = value


# Outcomes of one send: what the sender does next depends only on the type. Structs,
# not frozen dataclasses: one is made per push, and a frozen dataclass's __init__ costs
# an object.__setattr__ per field.


class Sent(msgspec.Struct, frozen=True):
    gateway_id: str | None
    status: int = 200


class TokenGone(msgspec.Struct, frozen=True):
    """The gateway says this token will never work again: disable it, never retry."""

    reason: str
    status: int


class Retry(msgspec.Struct, frozen=True):
    """Worth trying again (429, 5xx, timeouts, lost connections)."""

    reason: str
    status: int | None = None
    after: float | None = None   # the gateway's Retry-After, when it gave one


class Withdrawn(msgspec.Struct, frozen=True):
    """The incident was cleared, cancelled or re-decided before this push went out."""

    reason: str


class Failed(msgspec.Struct, frozen=True):
    """The request itself is wrong (payload, topic, credentials): retrying won't help."""

    reason: str
    status: int | None = None


Outcome = Sent | TokenGone | Retry | Failed | Withdrawn

Done = Callable[[Outcome], None]

log = logging.getLogger(__name__)

A = TypeVar("A")


def report(classify: Callable[[A], Outcome], unanswered: Callable[[Exception], Outcome | None],
           platform: str, done: Done, answer: A | Exception) -> None:
    """``done`` with the outcome of a gateway's ``answer`` (its response, or the
    exception that stands for it), exactly once, whatever happens: a response the
    classification chokes on, or an exception no send should raise, is a bug, logged
    and retried, never a send slot the sender waits for forever. A gateway binds the
    first three once (``functools.partial``), then ``done`` per push."""
    try:
        outcome = (unanswered(answer) if isinstance(answer, Exception)
                   else classify(answer))
        if outcome is None:
            raise answer if isinstance(answer, Exception) else TypeError(answer)
    except Exception as exc:
        log.error("%s send failed unexpectedly", platform, exc_info=exc)
        outcome = Retry(type(exc).__name__)
    done(outcome)
