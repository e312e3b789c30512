"""What a push token looks like on each platform (pure).

A token that can't be one is refused at registration: random strings cost a farm
nothing, and every one of them would be a send the gateway refuses.
"""

from __future__ import annotations

import re

# APNs device tokens are 32 bytes, sent as 64 hex digits.
_APNS = re.compile(r"^[0-9a-fA-F]{64}$")
# FCM registration tokens: the app instance's id, a colon, the token proper, both
# URL-safe base64 ("dXk…:APA91b…", about 160 characters in all).
_FCM = re.compile(r"^[A-Za-z0-9_-]{8,64}:[A-Za-z0-9_-]{100,4000}$")

SHAPES = {
    "apns": (_APNS, "64 hexadecimal digits"),
    "fcm": (_FCM, "an FCM registration token: '<instance id>:<token>', URL-safe base64"),
}


def token_problem(platform: str, token: str) -> str | None:
    """Why the token can't be one of the platform's, or None when it can."""
    pattern, what = SHAPES[platform]
    if pattern.match(token):
        return None
    return f"is not a valid {platform} token (expected {what})"
