"""Incident categories, and which of them reach whom.

Call types are agency-specific free text or codes; an agency's call-type map turns
them into these categories. Only categories that matter to a neighbourhood are
pushed to neighbours; ``cardiac_arrest`` goes to opted-in CPR responders only.
"""

from __future__ import annotations

import re

UNMAPPED = "unmapped"

NEIGHBOUR_ALERTABLE: frozenset[str] = frozenset(
    {
        "burglary", "vehicle_break_in", "vehicle_theft", "robbery", "shots_fired",
        "shooting", "stabbing", "hostage", "arson", "residential_fire",
        "commercial_fire", "structure_fire", "explosion",
    }
)
RESPONDER_ONLY: frozenset[str] = frozenset({"cardiac_arrest"})

# Categories that come through during a device's quiet hours.
MOST_SEVERE: frozenset[str] = frozenset({"shooting", "shots_fired", "hostage", "explosion"})

# Other categories agencies commonly map to: stored, never pushed by default.
KNOWN_QUIET: frozenset[str] = frozenset(
    {
        "medical", "traffic_collision", "fire_alarm", "vehicle_fire", "outdoor_fire",
        "hazmat", "rescue", "gas_leak", "assault", "disturbance", "theft",
        "suspicious", "welfare_check", "other",
    }
)

ALL_CATEGORIES: frozenset[str] = NEIGHBOUR_ALERTABLE | RESPONDER_ONLY | KNOWN_QUIET

LABELS_EN: dict[str, str] = {
    "burglary": "Burglary",
    "vehicle_break_in": "Vehicle break-in",
    "vehicle_theft": "Vehicle theft",
    "robbery": "Robbery",
    "shots_fired": "Shots fired",
    "shooting": "Shooting",
    "stabbing": "Stabbing",
    "hostage": "Hostage situation",
    "arson": "Arson",
    "residential_fire": "House fire",
    "commercial_fire": "Commercial fire",
    "structure_fire": "Structure fire",
    "explosion": "Explosion",
    "cardiac_arrest": "CPR needed",
}

_CATEGORY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def is_valid_category_name(name: str) -> bool:
    return bool(_CATEGORY_NAME.match(name))


def normalize_call_type(call_type: str) -> str:
    """The key a call type is looked up by: case- and spacing-insensitive.

    "Fire in Building", " FIRE  IN building " and "fire-in-building" are one key;
    codes ("459", "10851") are unchanged.
    """
    return re.sub(r"[\s_\-]+", " ", call_type).strip().casefold()


def categorize(call_type: str, call_type_map: dict[str, str]) -> str:
    """Category for a call type under an agency's (already normalized) map."""
    return call_type_map.get(normalize_call_type(call_type), UNMAPPED)
