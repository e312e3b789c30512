"""Apple's APNs request rules, as pure functions, for the fake gateway.

``check_request`` applies the path, header and payload rules; ``ProviderTokens``
verifies the ES256 provider tokens (JWT) with a per-token-string cache, so the fake
verifies each distinct token once.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

DEVICE_PATH = "/3/device/"
TOKEN_RE = re.compile(r"[0-9a-fA-F]{64}")
PUSH_TYPES = frozenset(
    {
        "alert", "background", "controls", "location", "voip", "complication",
        "fileprovider", "mdm", "liveactivity", "pushtotalk", "widgets",
    }
)
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
TOKEN_MAX_AGE_S = 60 * 60
TOKEN_MIN_REFRESH_S = 20 * 60


@dataclass(frozen=True)
class Rejection:
    status: int
    reason: str


def device_token(path: str) -> str:
    return path[len(DEVICE_PATH):] if path.startswith(DEVICE_PATH) else ""


def check_request(
    method: str, path: str, headers: Mapping[str, str], body: bytes, topic: str
) -> Rejection | None:
    """Apple's rules for everything but the provider token and the token's status."""
    if method != "POST":
        return Rejection(405, "MethodNotAllowed")
    if not path.startswith(DEVICE_PATH):
        return Rejection(404, "BadPath")
    apns_id = headers.get("apns-id")
    if apns_id is not None and not _is_uuid(apns_id):
        return Rejection(400, "BadMessageId")
    request_topic = headers.get("apns-topic")
    if not request_topic:
        return Rejection(400, "MissingTopic")
    if not TOKEN_RE.fullmatch(device_token(path)):
        return Rejection(400, "BadDeviceToken")
    if request_topic != topic:
        # Token-based auth may push to any topic of the team; a token of another
        # app than the one named is what Apple reports for a wrong topic.
        return Rejection(400, "DeviceTokenNotForTopic")
    return _check_headers(headers) or _check_payload(headers, body)


def _check_headers(headers: Mapping[str, str]) -> Rejection | None:
    collapse_id = headers.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
        return Rejection(400, "BadCollapseId")
    priority = headers.get("apns-priority")
    if priority is not None and priority not in ("5", "10", "1"):
        return Rejection(400, "BadPriority")
    push_type = headers.get("apns-push-type")
    if push_type is not None and push_type not in PUSH_TYPES:
        return Rejection(400, "InvalidPushType")
    expiration = headers.get("apns-expiration")
    if expiration is not None and not _is_int(expiration):
        return Rejection(400, "BadExpirationDate")
    return None


def _check_payload(headers: Mapping[str, str], body: bytes) -> Rejection | None:
    if not body.strip():
        return Rejection(400, "PayloadEmpty")
    limit = MAX_VOIP_PAYLOAD if headers.get("apns-push-type") == "voip" else MAX_PAYLOAD
    if len(body) > limit:
        return Rejection(413, "PayloadTooLarge")
    return None


INTERRUPTION_LEVELS = frozenset({"passive", "active", "time-sensitive", "critical"})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_sound(sound: object) -> bool:
    """A sound name, or the critical-alert dictionary: ``critical`` 0 or 1, ``name``,
    ``volume`` from 0 to 1."""
    if isinstance(sound, str):
        return True
    if not isinstance(sound, dict) or not isinstance(sound.get("name"), str):
        return False
    if sound.get("critical", 0) not in (0, 1) or isinstance(sound.get("critical"), bool):
        return False
    volume = sound.get("volume", 1)
    return _is_number(volume) and 0 <= volume <= 1


def check_aps(payload: dict[str, object]) -> Rejection | None:
    """The ``aps`` dictionary as Apple defines it: ``interruption-level`` one of
    Apple's four, ``relevance-score`` a number from 0 to 1, ``sound`` a name or the
    critical-alert dictionary, ``alert`` a string or dictionary, ``category`` a
    string. (Apple's device, not its gateway, drops a malformed ``aps``; the fake
    refuses it with ``BadPayload`` so a test sees the mistake instead of silence.)"""
    aps = payload.get("aps")
    if aps is None:
        return None
    if not isinstance(aps, dict):
        return Rejection(400, "BadPayload")
    level = aps.get("interruption-level")
    if level is not None and level not in INTERRUPTION_LEVELS:
        return Rejection(400, "BadPayload")
    score = aps.get("relevance-score")
    if score is not None and not (_is_number(score) and 0 <= score <= 1):
        return Rejection(400, "BadPayload")
    if "sound" in aps and not _check_sound(aps["sound"]):
        return Rejection(400, "BadPayload")
    alert = aps.get("alert")
    if alert is not None and not isinstance(alert, str | dict):
        return Rejection(400, "BadPayload")
    if "category" in aps and not isinstance(aps["category"], str):
        return Rejection(400, "BadPayload")
    return None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _is_int(value: str) -> bool:
    return value.isascii() and value.lstrip("-").isdigit()


@dataclass(frozen=True)
class _Verified:
    iat: int


class ProviderTokens:
    """Verifies ``authorization: bearer <jwt>`` the way APNs does.

    Signature, kid, alg and iss are checked once per token string (cached); age and
    the refresh rate (per team: a token with a new ``iat`` less than 20 minutes after
    the previous new one is refused) are checked on every request.
    """

    def __init__(
        self, public_keys: Mapping[str, bytes], team_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for kid, pem in public_keys.items():
            key = load_pem_public_key(pem)
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError(f"provider key {kid!r} is not an EC key")
            self._keys[kid] = key
        self._team_id = team_id
        self._clock = clock
        self._cache: dict[str, _Verified | Rejection] = {}
        self._current_iat: int | None = None
        self._current_since = 0.0

    def check(self, authorization: str | None) -> Rejection | None:
        if not authorization:
            return Rejection(403, "MissingProviderToken")
        verified = self._cache.get(authorization)
        if verified is None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            verified = self._cache[authorization] = self._verify(authorization)
        if isinstance(verified, Rejection):
            return verified
        now = self._clock()
        if verified.iat < now - TOKEN_MAX_AGE_S:
            return Rejection(403, "ExpiredProviderToken")
        if verified.iat != self._current_iat:
            if self._current_iat is not None and now - self._current_since < TOKEN_MIN_REFRESH_S:
                return Rejection(429, "TooManyProviderTokenUpdates")
            self._current_iat, self._current_since = verified.iat, now
        return None

    def _verify(self, authorization: str) -> _Verified | Rejection:
        invalid = Rejection(403, "InvalidProviderToken")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return invalid
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid")))
            if header.get("alg") != "ES256" or key is None:
                return invalid
            claims = jwt.decode(
                token, key, algorithms=["ES256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidTokenError:
            return invalid
        iat = claims.get("iat")
        if claims.get("iss") != self._team_id or not isinstance(iat, int):
            return invalid
        return _Verified(iat)
