"""Validation of an agency's definition (shared by the admin API and the CLI)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.domain.categories import ALL_CATEGORIES, normalize_call_type
from server.domain.errors import FieldError, ValidationFailed

_AGENCY_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class AgencySpec:
    id: str
    name: str
    timezone: str
    call_types: dict[str, str]   # normalized key -> category


def valid_timezone(name: str) -> bool:
    if not name or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def validate_agency(
    agency_id: str, name: str, timezone: str, call_types: dict[str, str]
) -> AgencySpec:
    errors: list[FieldError] = []
    if not _AGENCY_ID.match(agency_id):
        errors.append(FieldError(
            "id", "must be 1-63 characters of lowercase letters, digits, '-' or '_'"))
    if not name.strip():
        errors.append(FieldError("name", "must not be blank"))
    if not valid_timezone(timezone):
        errors.append(FieldError("timezone", f"{timezone!r} is not an IANA time zone"))
    try:
        normalized = validate_call_types(call_types)
    except ValidationFailed as exc:
        errors.extend(exc.errors)
    if errors:
        raise ValidationFailed(errors)
    return AgencySpec(agency_id, name.strip(), timezone, normalized)


def validate_call_types(call_types: dict[str, str]) -> dict[str, str]:
    """A call-type map with its keys normalized (case and spacing insensitive)."""
    errors: list[FieldError] = []
    normalized: dict[str, str] = {}
    for call_type, category in call_types.items():
        key = normalize_call_type(call_type)
        if not key:
            errors.append(FieldError(f"call_types[{call_type!r}]", "call type is blank"))
        elif len(key) > 200:
            errors.append(FieldError(f"call_types[{call_type!r}]", "longer than 200 characters"))
        elif category not in ALL_CATEGORIES:
            errors.append(FieldError(
                f"call_types[{call_type!r}]",
                f"unknown category {category!r}; valid: {', '.join(sorted(ALL_CATEGORIES))}",
            ))
        else:
            normalized[key] = category
    if errors:
        raise ValidationFailed(errors)
    return normalized
