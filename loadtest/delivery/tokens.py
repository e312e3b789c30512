"""Credentials the fakes accept, minted as the clients mint them: an APNs provider
token, and an FCM access token from the fake's token endpoint."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import jwt

from loadtest.bench_common import http_json
from server.dev.devkeys import ensure_apns_key


def apns_jwt(certs_dir: Path) -> str:
    key = ensure_apns_key(certs_dir)
    return jwt.encode({"iss": key.team_id, "iat": int(time.time())},
                      key.key_file.read_text(), algorithm="ES256",
                      headers={"kid": key.key_id})


def fcm_access_token(certs_dir: Path, port: int) -> str:
    """An OAuth access token from the fake's /token, by the JWT-bearer grant."""

    sa = json.loads((certs_dir / "fcm-service-account.json").read_text())
    now = int(time.time())
    assertion = jwt.encode(
        {"iss": sa["client_email"], "scope": "https://www.googleapis.com/auth/firebase.messaging",
         "aud": "https://oauth2.googleapis.com/token", "iat": now, "exp": now + 3600},
        sa["private_key"], algorithm="RS256")
    form = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion,
    }).encode()
    answer = http_json(f"http://127.0.0.1:{port}/token", "POST", form,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    return str(answer["access_token"])
