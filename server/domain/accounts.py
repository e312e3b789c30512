"""Editor accounts (pure): roles, what a username and a password must be, password
hashing, and who may do what for which agency."""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from server.domain.errors import FieldError, ValidationFailed

EDITOR = "editor"
AGENCY_ADMIN = "agency_admin"
ROLES = (EDITOR, AGENCY_ADMIN)

MIN_PASSWORD = 12
MAX_PASSWORD = 256
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{2,63}$")

# argon2id with RFC 9106's second recommended option (64 MiB, 3 passes, 4 lanes):
# memory-hard, about a tenth of a second per hash; checks run off the event loop.
_HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4)
# Verified against when the username is unknown, so a wrong name costs what a wrong
# password costs and the sign-in time does not tell which names exist.
_DUMMY_HASH = _HASHER.hash("geopush: no such user, nothing to match")


def normalize_username(raw: str) -> str:
    return raw.strip().lower()


def plausible_username(name: str) -> bool:
    """Whether an account could have this (normalized) name: one that couldn't is not
    looked up (PostgreSQL refuses text with NUL, and there is nothing to find)."""
    return _USERNAME.match(name) is not None


def validate_new_account(username: str, password: str, role: str) -> str:
    """The normalized username, or ValidationFailed naming each bad field."""
    errors = []
    name = normalize_username(username)
    if not _USERNAME.match(name):
        errors.append(FieldError(
            "username", "3 to 64 characters: letters, digits and . _ @ -, "
            "starting with a letter or digit"))
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        errors.append(FieldError(
            "password", f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"))
    elif password.strip().lower() == name:
        errors.append(FieldError("password", "must not be the username"))
    if role not in ROLES:
        errors.append(FieldError("role", f"must be one of: {', '.join(ROLES)}"))
    if errors:
        raise ValidationFailed(errors)
    return name


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; always does the full work (see _DUMMY_HASH)."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and \
            password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """Who is asking: the operator (admin bearer token, every agency) or a named user
    of one agency, signed in with a session cookie."""

    name: str                       # username, or "operator"
    agency_id: str | None = None    # None for the operator
    role: str | None = None
    csrf_token: str | None = None   # sessions only

    @property
    def is_operator(self) -> bool:
        return self.agency_id is None

    def sees(self, agency_id: str) -> bool:
        """May see and decide this agency's review items."""
        return self.is_operator or self.agency_id == agency_id

    def administers(self, agency_id: str) -> bool:
        """May manage this agency's editors, call-type map and manual alerts."""
        return self.is_operator or (self.agency_id == agency_id and self.role == AGENCY_ADMIN)
