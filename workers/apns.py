"""APNs: the pure payload builder and the gateway adapter around ``ApnsClient``."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from typing import Any

import msgspec

from server.domain.responses import IOS_RESPONDER_CATEGORY
from server.store.redisclient import REDIS_UNAVAILABLE
from workers.gateways.apns_client import ApnsClient, ApnsResponse, ApnsTransportError
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

# Reasons that mean the token itself is unusable for this app, for good.
_TOKEN_GONE = {"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"}
# 403 ExpiredProviderToken is ours to fix by minting a new JWT, which the client does;
# worth one more try. Everything else at 4xx is a request we built wrong.
_RETRYABLE_REASONS = {"ExpiredProviderToken", "TooManyRequests", "Shutdown",
                      "ServiceUnavailable", "InternalServerError"}


MAX_PAYLOAD_BYTES = 4096


log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


def _size(payload: dict[str, Any]) -> int:
    # The same encoder as the client's (compact UTF-8), so the size is what goes out.
    return len(_encode(payload))


def fit(payload: dict[str, Any], limit: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Keep a payload within the gateway's limit: AED descriptions go first, then AEDs,
    then the body is shortened. Normal payloads are far below the limit."""
    incident = payload["incident"]
    aeds = incident.get("aeds") or []
    if _size(payload) > limit:
        for aed in aeds:
            aed.pop("description", None)
    while _size(payload) > limit and aeds:
        aeds.pop()
    alert = payload["aps"]["alert"]
    while _size(payload) > limit and len(alert["body"]) > 20:
        alert["body"] = alert["body"][: len(alert["body"]) * 3 // 4] + "…"
    return payload


def build_payload(push: Push, now: dt.datetime, *, critical_alerts: bool = False
                  ) -> dict[str, Any]:
    """The APNs payload: the text, the presentation (``server.domain.severity``), and
    the incident's public data. ``critical_alerts``: the app holds Apple's
    critical-alerts entitlement (GEOPUSH_APNS_CRITICAL_ALERTS)."""
    title, body = push.text(now)
    look = push.presentation(critical_alerts=critical_alerts)
    aps: dict[str, Any] = {
        "alert": {"title": title, "body": body},
        "interruption-level": look.interruption_level,
        "relevance-score": look.relevance_score,
        "thread-id": push.category,
    }
    if look.interruption_level == "critical":
        aps["sound"] = {"critical": 1, "name": "default", "volume": 1.0}
    elif look.sound:
        aps["sound"] = "default"
    if push.audience == "responder" and push.kind == "alert":
        aps["category"] = IOS_RESPONDER_CATEGORY   # the app shows the answer buttons
    return fit({"aps": aps, "incident": push.incident_data()})


def priority(push: Push) -> int:
    """10 (at once) for alerts; 5 (as the phone's power allows) for silent updates."""
    return 5 if push.kind == "update" else 10


def classify(response: ApnsResponse) -> Outcome:
    reason = response.reason or ""
    if response.status == 200:
        return Sent(response.apns_id, 200)
    if response.status == 410 or reason in _TOKEN_GONE:
        return TokenGone(reason or "Unregistered", response.status)
    if response.status == 429 or response.status >= 500 or reason in _RETRYABLE_REASONS:
        return Retry(reason or f"HTTP {response.status}", response.status)
    return Failed(reason or f"HTTP {response.status}", response.status)


def _unanswered(exc: Exception) -> Retry | None:
    """The outcome of a send that got no answer from APNs; None for an exception no
    send should raise (a bug)."""
    if isinstance(exc, ApnsTransportError):
        return Retry(f"transport: {exc}" if str(exc) else "transport error")
    if isinstance(exc, REDIS_UNAVAILABLE):   # the shared provider token was unreachable
        return Retry(f"provider token: {exc}")
    return None


class ApnsGateway:
    platform = "apns"

    def __init__(self, client: ApnsClient, *, critical_alerts: bool = False) -> None:
        self.client = client
        self.critical_alerts = critical_alerts
        self._payloads: PayloadCache[bytes] = PayloadCache()
        self._report = functools.partial(report, classify, _unanswered, "APNs")

    def payload(self, push: Push, now: float) -> bytes:
        """The encoded payload: the same for every device of a fan-out (same incident,
        locale and audience, within the same minute), so built once for all of them."""
        key = (*push_text_key(push, now), push.lat, push.lon, push.aeds)
        payload = self._payloads.get(key)
        if payload is None:
            payload = _encode(build_payload(push, dt.datetime.fromtimestamp(now, dt.UTC),
                                            critical_alerts=self.critical_alerts))
            self._payloads.put(key, payload)
        return payload

    def start(self, push: Push, now: float, done: Done) -> None:
        """Send ``push``; ``done`` gets its outcome from the client's callback."""
        self.client.start(push.token, self.payload(push, now),
                          functools.partial(self._report, done), collapse_id=push.incident_id,
                          expiration=int(push.expires_at), priority=priority(push),
                          push_type="alert")

    async def close(self) -> None:
        await self.client.close()
