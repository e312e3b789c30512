from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.incident import Point
from server.domain.privacy import generalize_address, round_point


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("5300 24th Ave Ne", "5300 block of 24th Ave NE"),
        ("5312 24th Ave NE Apt 4B", "5300 block of 24th Ave NE"),
        ("2122 Alki Ave Sw", "2100 block of Alki Ave SW"),
        ("800 Jefferson St", "800 block of Jefferson St"),
        ("42 Pine St #12", "0 block of Pine St"),
        ("1600 Pennsylvania Ave NW, Washington, DC 20500", "1600 block of Pennsylvania Ave NW"),
        ("1234 E Pike St Unit 5", "1200 block of E Pike St"),
        ("3rd Ave / Pine St", "3rd Ave / Pine St"),
        ("Aurora Ave N & N 85th St", "Aurora Ave N / N 85th St"),
        ("I5 Nb / Ne 45th St", "I5 NB / NE 45th St"),
    ],
)
def test_addresses_become_blocks_and_intersections_stay(address: str, public: str) -> None:
    assert generalize_address(address) == public


@pytest.mark.parametrize("address", [None, "", "   ", "Green Lake Park", "12345", "#4"])
def test_unrecognised_addresses_are_withheld(address: str | None) -> None:
    assert generalize_address(address) is None


@given(st.integers(0, 99_999), st.sampled_from(["Main St", "24th Ave NE", "Alki Ave Sw"]),
       st.sampled_from(["", " Apt 3", " #7", " Unit 12B", " Suite 200"]))
def test_house_number_and_unit_never_survive(number: int, street: str, unit: str) -> None:
    public = generalize_address(f"{number} {street}{unit}")
    assert public is not None
    assert public.startswith(f"{number - number % 100} block of ")
    if number % 100:
        assert str(number) not in public.split(" block")[0] or number < 100
    for token in ("Apt", "#", "Unit", "Suite"):
        assert token not in public


@given(st.text(max_size=120))
def test_generalize_never_raises(address: str) -> None:
    generalize_address(address)


def test_point_is_rounded_to_about_100_m() -> None:
    assert round_point(Point(47.66707, -122.301946)) == Point(47.667, -122.302)
