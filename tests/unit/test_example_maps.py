"""The call-type maps shipped in server/examples/ load as agencies and map what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.domain.agency_spec import validate_call_types
from server.domain.categories import categorize

EXAMPLES = Path(__file__).resolve().parents[2] / "server" / "examples" / "call-types"


@pytest.mark.parametrize("name", ["seattle-fire.json", "california-police.json"])
def test_example_maps_are_valid(name: str) -> None:
    assert validate_call_types(json.loads((EXAMPLES / name).read_text()))


def test_seattle_fire_map_covers_its_alertable_call_types() -> None:
    mapping = validate_call_types(json.loads((EXAMPLES / "seattle-fire.json").read_text()))
    assert categorize("Fire in Building", mapping) == "structure_fire"
    assert categorize("RESIDENTIAL FIRE", mapping) == "residential_fire"
    assert categorize("Scenes Of Violence 7", mapping) == "shooting"
    assert categorize("Aid Response", mapping) == "medical"
    assert categorize("Trans to AMR", mapping) == "unmapped"


def test_california_penal_codes() -> None:
    mapping = validate_call_types(json.loads((EXAMPLES / "california-police.json").read_text()))
    expected = {"459": "burglary", "10851": "vehicle_theft", "211": "robbery",
                "217": "shooting", "246 pc": "shooting", "451": "arson"}
    for code, category in expected.items():
        assert categorize(code, mapping) == category
