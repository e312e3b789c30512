"""Google's FCM HTTP v1 and OAuth rules, as pure functions, for the fake gateway (as
``apns_rules`` is for the fake APNs): the JWT-bearer assertion checks of the token
endpoint, ``validate_message`` for ``messages:send``, and the error shapes both answer
with (``Reply``: status, headers, body, whichever protocol carries it)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jwt
from cryptography.hazmat.primitives import serialization

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Audiences Google's token endpoint accepts; google-auth always signs for the first one,
# whatever token_uri the key file names. The fake's own /token URL is accepted too.
GOOGLE_TOKEN_AUDIENCES = frozenset(
    {
        "https://oauth2.googleapis.com/token",
        "https://www.googleapis.com/oauth2/v4/token",
        "https://accounts.google.com/o/oauth2/token",
    }
)
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
MAX_ASSERTION_LIFETIME_S = 3600
CLOCK_SKEW_S = 300
MAX_DATA_BYTES = 4096
MAX_TTL_S = 28 * 24 * 3600
MAX_BODY_BYTES = 1024 * 1024  # a request body, over either protocol
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"

# HTTP status -> google.rpc canonical status name.
HTTP_TO_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# FCM errorCode -> the HTTP status FCM answers it with.
ERROR_CODE_TO_HTTP = {
    "UNSPECIFIED_ERROR": 500,
    "INVALID_ARGUMENT": 400,
    "UNREGISTERED": 404,
    "SENDER_ID_MISMATCH": 403,
    "QUOTA_EXCEEDED": 429,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
    "THIRD_PARTY_AUTH_ERROR": 401,
}
HTTP_TO_ERROR_CODE = {
    400: "INVALID_ARGUMENT",
    401: "THIRD_PARTY_AUTH_ERROR",
    403: "SENDER_ID_MISMATCH",
    404: "UNREGISTERED",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
ERROR_MESSAGES = {
    "UNREGISTERED": "Requested entity was not found.",
    "SENDER_ID_MISMATCH": "SenderId mismatch",
    "QUOTA_EXCEEDED": "Quota exceeded for quota metric 'Messages' and limit "
    "'Messages per minute' of service 'fcm.googleapis.com'.",
    "UNAVAILABLE": "The service is currently unavailable.",
    "INTERNAL": "Internal error encountered.",
    "THIRD_PARTY_AUTH_ERROR": "Auth error from APNS or Web Push Service",
    "INVALID_ARGUMENT": "Request contains an invalid argument.",
}

_DURATION = re.compile(r"^(\d+)(\.\d{1,9})?s$")
_MESSAGE_FIELDS = {
    "name", "data", "notification", "android", "webpush", "apns", "fcm_options",
    "fcmOptions", "token", "topic", "condition",
}
_NOTIFICATION_FIELDS = {"title", "body", "image"}
_ANDROID_FIELDS = {
    "collapse_key", "collapseKey", "priority", "ttl", "restricted_package_name",
    "restrictedPackageName", "data", "notification", "fcm_options", "fcmOptions",
    "direct_boot_ok", "directBootOk", "bandwidth_constrained_ok", "restricted_satellite_ok",
}
_APNS_FIELDS = {"headers", "payload", "fcm_options", "fcmOptions", "live_activity_token"}
_WEBPUSH_FIELDS = {"headers", "data", "notification", "fcm_options", "fcmOptions"}
_ANDROID_PRIORITIES = {"NORMAL", "HIGH"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


# AndroidNotification (FCM v1); proto3 JSON accepts each name in snake and camel case.
_ANDROID_NOTIFICATION_STRINGS = (
    "title", "body", "icon", "color", "sound", "tag", "click_action", "body_loc_key",
    "title_loc_key", "channel_id", "ticker", "event_time", "image",
)
_ANDROID_NOTIFICATION_FIELDS = {
    f for name in (*_ANDROID_NOTIFICATION_STRINGS, "body_loc_args", "title_loc_args", "sticky",
                   "local_only", "notification_priority", "default_sound",
                   "default_vibrate_timings", "default_light_settings", "vibrate_timings",
                   "visibility", "notification_count", "light_settings",
                   "bypass_proxy_notification", "proxy")
    for f in (name, _camel(name))
}
_NOTIFICATION_PRIORITIES = {"PRIORITY_UNSPECIFIED", "PRIORITY_MIN", "PRIORITY_LOW",
                            "PRIORITY_DEFAULT", "PRIORITY_HIGH", "PRIORITY_MAX"}
_VISIBILITIES = {"VISIBILITY_UNSPECIFIED", "PRIVATE", "PUBLIC", "SECRET"}
_TOPIC = re.compile(r"^(/topics/)?[a-zA-Z0-9\-_.~%]{1,900}$")
SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_JSON_HEADERS = {"Content-Type": JSON_CONTENT_TYPE}


class Reply(NamedTuple):
    """An answer, whichever protocol carries it (header names in HTTP/1.1 spelling)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def json_reply(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Reply:
    return Reply(
        status, _JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers},
        json.dumps(obj).encode(),
    )


class InvalidMessage(Exception):
    """A message FCM would reject with 400 INVALID_ARGUMENT."""

    def __init__(self, field_path: str, description: str, *, fcm_error: bool = True) -> None:
        super().__init__(description)
        self.field_path = field_path
        self.description = description
        # Protobuf-level problems (unknown field, wrong JSON type) carry only a
        # google.rpc.BadRequest detail; FCM-level ones also carry an FcmError.
        self.fcm_error = fcm_error


def abbrev(token: str | None) -> str:
    if token is None:
        return "-"
    return token if len(token) <= 12 else f"{token[:6]}…{token[-4:]}"


def oauth_error(error: str, description: str, status: int = 400) -> Reply:
    return json_reply({"error": error, "error_description": description}, status)


def google_error(
    http_status: int,
    message: str,
    *,
    error_code: str | None = None,
    field_violation: tuple[str, str] | None = None,
    reason: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An error in Google's JSON shape, with FCM's ``details`` when given."""
    details: list[dict[str, Any]] = []
    if error_code is not None:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if field_violation is not None:
        details.append(
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [
                    {"field": field_violation[0], "description": field_violation[1]}
                ],
            }
        )
    if reason is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        )
    error: dict[str, Any] = {
        "code": http_status,
        "message": message,
        "status": HTTP_TO_STATUS.get(http_status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return json_reply({"error": error}, http_status, headers)


def check_fields(obj: Any, allowed: set[str], path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidMessage(
            path, f"Invalid value at '{path}' (type.googleapis.com/...), "
            f"{json.dumps(obj)}", fcm_error=False,
        )
    for key in obj:
        if key not in allowed:
            raise InvalidMessage(
                path,
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': "
                "Cannot find field.",
                fcm_error=False,
            )
    return obj


def _check_string_map(obj: Any, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidMessage(
            path, f"Invalid value at '{path}' (map<string, string>), {json.dumps(obj)}",
            fcm_error=False,
        )
    for i, (key, value) in enumerate(obj.items()):
        if not isinstance(value, str):
            raise InvalidMessage(
                f"{path}[{i}].value",
                f"Invalid value at '{path}[{i}].value' (TYPE_STRING), {json.dumps(value)} "
                f"(key \"{key}\": data values must be strings)",
                fcm_error=False,
            )
    return obj


def _check_string(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(
            f"{path}.{key}", f"Invalid value at '{path}.{key}' (TYPE_STRING), "
            f"{json.dumps(value)}", fcm_error=False,
        )
    return value


def _check_ttl(value: Any, path: str) -> None:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidMessage(
            path,
            f"Invalid value at '{path}' (type.googleapis.com/google.protobuf.Duration), "
            f"{json.dumps(value)}",
            fcm_error=False,
        )
    if int(match.group(1)) > MAX_TTL_S:
        raise InvalidMessage(path, "TTL must not exceed 4 weeks (2419200s).")


def _check_android(android: Any) -> None:
    android = check_fields(android, _ANDROID_FIELDS, "message.android")
    priority = android.get("priority")
    if priority is not None and priority not in _ANDROID_PRIORITIES:
        raise InvalidMessage(
            "message.android.priority",
            "Invalid value at 'message.android.priority' "
            f"(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), "
            f"{json.dumps(priority)}",
            fcm_error=False,
        )
    if "ttl" in android:
        _check_ttl(android["ttl"], "message.android.ttl")
    for key in ("collapse_key", "collapseKey", "restricted_package_name"):
        _check_string(android, key, "message.android")
    if "data" in android:
        _check_string_map(android["data"], "message.android.data")
    if "notification" in android:
        _check_android_notification(android["notification"])


def _check_enum(obj: Mapping[str, Any], key: str, allowed: set[str], path: str,
                proto: str) -> None:
    for name in (key, _camel(key)):
        value = obj.get(name)
        if value is not None and value not in allowed:
            raise InvalidMessage(
                f"{path}.{name}", f"Invalid value at '{path}.{name}' ({proto}), "
                f"{json.dumps(value)}", fcm_error=False)


def _check_android_notification(notification: Any) -> None:
    """AndroidNotification as FCM checks it: known fields only, strings where strings
    belong (``channel_id`` among them), enums from their lists."""
    path = "message.android.notification"
    notification = check_fields(notification, _ANDROID_NOTIFICATION_FIELDS, path)
    for name in _ANDROID_NOTIFICATION_STRINGS:
        _check_string(notification, name, path)
        _check_string(notification, _camel(name), path)
    _check_enum(notification, "notification_priority", _NOTIFICATION_PRIORITIES, path,
                "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification.Priority")
    _check_enum(notification, "visibility", _VISIBILITIES, path,
                "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification.Visibility")
    color = notification.get("color")
    if color is not None and not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
        raise InvalidMessage(f"{path}.color", "Color must be in the form #RRGGBB.")


def _check_content(message: Mapping[str, Any]) -> None:
    if "data" in message:
        data = _check_string_map(message["data"], "message.data")
        if len(json.dumps(data)) > MAX_DATA_BYTES:
            raise InvalidMessage("message.data", "Android message is too big")
    if "notification" in message:
        notification = check_fields(
            message["notification"], _NOTIFICATION_FIELDS, "message.notification"
        )
        for key in _NOTIFICATION_FIELDS:
            _check_string(notification, key, "message.notification")
    if "android" in message:
        _check_android(message["android"])
    if "apns" in message:
        apns = check_fields(message["apns"], _APNS_FIELDS, "message.apns")
        if "headers" in apns:
            _check_string_map(apns["headers"], "message.apns.headers")
        if "payload" in apns and not isinstance(apns["payload"], dict):
            raise InvalidMessage("message.apns.payload", "payload must be an object",
                                 fcm_error=False)
    if "webpush" in message:
        webpush = check_fields(message["webpush"], _WEBPUSH_FIELDS, "message.webpush")
        for key in ("headers", "data"):
            if key in webpush:
                _check_string_map(webpush[key], f"message.webpush.{key}")


def validate_message(message: Any) -> str | None:
    """Checks a v1 ``Message`` as FCM would; returns the registration token, if any."""
    message = check_fields(message, _MESSAGE_FIELDS, "message")
    targets = [k for k in ("token", "topic", "condition") if message.get(k) is not None]
    if not targets:
        raise InvalidMessage("message", "Recipient of the message is not set.")
    if len(targets) > 1:
        raise InvalidMessage(
            "message", f"Exactly one of token, topic or condition must be set (got "
            f"{', '.join(targets)})."
        )
    token = _check_string(message, "token", "message")
    if token is not None and (not token or any(c.isspace() for c in token)):
        raise InvalidMessage(
            "message.token", "The registration token is not a valid FCM registration token"
        )
    topic = _check_string(message, "topic", "message")
    if topic is not None and not _TOPIC.match(topic):
        raise InvalidMessage("message.topic", "Invalid topic name")
    _check_string(message, "condition", "message")
    _check_content(message)
    return token


def load_public_key(pem: bytes) -> Any:
    return serialization.load_pem_public_key(pem)


class GrantError(Exception):
    """An assertion Google's token endpoint would refuse (``error``: OAuth's code)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def verify_assertion(assertion: str, *, keys: Mapping[str, Any], accept_any: bool,
                     own_url: str, now: float) -> dict[str, Any]:
    """The claims of a service account's JWT-bearer assertion, checked as Google's token
    endpoint checks them (RS256, a known account's signature, audience, a short
    lifetime around ``now``, a scope); GrantError otherwise."""
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise GrantError("invalid_grant", f"Invalid JWT: {e}") from e
    if header.get("alg") != "RS256":
        raise GrantError("invalid_grant", "Invalid JWT: algorithm must be RS256.")
    iss = unverified.get("iss")
    if not isinstance(iss, str) or not iss:
        raise GrantError("invalid_grant", "Invalid JWT: missing iss claim.")
    key = keys.get(iss)
    if key is None and not accept_any:
        raise GrantError("invalid_grant", "Invalid grant: account not found")
    if key is not None:
        try:
            jwt.decode(
                assertion, key, algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError as e:
            raise GrantError("invalid_grant", "Invalid JWT Signature.") from e
    aud = unverified.get("aud")
    if aud not in GOOGLE_TOKEN_AUDIENCES and aud != own_url:
        raise GrantError("invalid_grant", f"Invalid JWT: audience {aud!r} is not accepted.")
    iat, exp = unverified.get("iat"), unverified.get("exp")
    if (
        not isinstance(iat, int | float)
        or not isinstance(exp, int | float)
        or exp <= iat
        or exp - iat > MAX_ASSERTION_LIFETIME_S
        or iat > now + CLOCK_SKEW_S
        or exp < now - CLOCK_SKEW_S
    ):
        raise GrantError(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
            "reasonable timeframe. Check your iat and exp values in the JWT claim.",
        )
    if not str(unverified.get("scope", "")).split():
        raise GrantError("invalid_scope", "Empty or missing scope not allowed.")
    return unverified
