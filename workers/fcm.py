"""FCM HTTP v1: the pure message builder and the gateway adapter around ``FcmClient``."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from typing import Any

import msgspec
from msgspec.structs import replace

from workers.gateways.fcm_client import FcmClient, FcmResponse, FcmTransportError
from workers.push import (
    Done,
    Failed,
    Outcome,
    PayloadCache,
    Push,
    Retry,
    Sent,
    TokenGone,
    push_text_key,
    report,
)

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


def _compact(value: Any) -> str:
    return _encode(value).decode()


def build_message(push: Push, now: dt.datetime) -> dict[str, Any]:
    """The FCM v1 message: the text, the Android channel and priority
    (``server.domain.severity``), and the incident's public data as strings."""
    update = push.kind == "update"
    title, body = push.text(now)
    look = push.presentation()
    ttl = max(0, int(push.expires_at - now.timestamp()))
    data = push.incident_data()
    # FCM data values must be strings.
    strings = {"incident_id": push.incident_id, "category": push.category,
               "area": _compact(data["area"]), "kind": push.kind}
    if update:
        strings["status"] = push.status
    elif push.audience == "responder":
        strings.update(aeds=_compact(data["aeds"]), responder="true",
                       actions=",".join(data["actions"]))
    return {
        "token": push.token,
        "notification": {"title": title, "body": body},
        "data": strings,
        "android": {
            "priority": "HIGH" if look.high_priority else "NORMAL",
            "collapse_key": push.incident_id,
            "ttl": f"{ttl}s",
            # The same tag: the update replaces the alert in the notification shade.
            "notification": {"tag": push.incident_id, "channel_id": look.channel_id},
        },
    }


def classify(response: FcmResponse) -> Outcome:
    code = response.error_code or ""
    if response.status == 200:
        return Sent(response.name, 200)
    if code in ("UNREGISTERED", "SENDER_ID_MISMATCH") or response.status == 404:
        return TokenGone(code or "NOT_FOUND", response.status)
    if code == "INVALID_ARGUMENT" and "registration token" in (response.message or "").lower():
        return TokenGone("INVALID_ARGUMENT: token", response.status)
    if response.status in (401, 429) or response.status >= 500:
        return Retry(code or f"HTTP {response.status}", response.status, response.retry_after)
    return Failed(f"{code}: {response.message}" if code else f"HTTP {response.status}",
                  response.status)


def _unanswered(exc: Exception) -> Retry | None:
    """The outcome of a send that got no answer from FCM; None for anything else
    (FcmAuthError, a bug)."""
    if isinstance(exc, FcmTransportError):
        return Retry(f"transport: {exc}" if str(exc) else "transport error")
    return None


_STAND_IN = "\u2063geopush-device-token\u2063"   # where the token goes; no real text has it
_STAND_IN_JSON = _encode(_STAND_IN)


class FcmGateway:
    platform = "fcm"

    def __init__(self, client: FcmClient) -> None:
        self.client = client
        self._bodies: PayloadCache[tuple[bytes, bytes]] = PayloadCache()
        self._report = functools.partial(report, classify, _unanswered, "FCM")

    def body(self, push: Push, now: float) -> bytes:
        """The encoded request: the same for every device of a fan-out but for the
        token (and the TTL, which changes by the second), so built once and the token
        spliced in."""
        ttl = int(push.expires_at - now)
        key = (*push_text_key(push, now), push.lat, push.lon, push.aeds, ttl)
        parts = self._bodies.get(key)
        if parts is None:
            template = build_message(replace(push, token=_STAND_IN),
                                     dt.datetime.fromtimestamp(now, dt.UTC))
            head, found, tail = _encode({"message": template}).partition(_STAND_IN_JSON)
            assert found, "the token's stand-in vanished from the message"
            parts = (head, tail)
            self._bodies.put(key, parts)
        return parts[0] + _encode(push.token) + parts[1]

    def start(self, push: Push, now: float, done: Done) -> None:
        """Send ``push``; ``done`` gets its outcome from the client's callback."""
        self.client.start_body(self.body(push, now), functools.partial(self._report, done))

    async def close(self) -> None:
        await self.client.close()
