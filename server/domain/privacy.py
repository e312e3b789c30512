"""What of an incident's location may be shown to the public.

The exact address and point stay inside the matcher; phones and the feed see a
block-level address and a point rounded to about 100 m, the way crime maps publish.
"""

from __future__ import annotations

import re

from server.domain.incident import Point

# 3 decimal places: 111 m of latitude, about 75 m of longitude at 47°N.
PUBLIC_DECIMALS = 3

_INTERSECTION = re.compile(r"\s(?:/|&|and|at|@)\s", re.IGNORECASE)
_HOUSE_NUMBER = re.compile(r"^\s*(\d+)(?:[-–]\d+)?[A-Za-z]?\s+(.+)$")
# Apartment, unit, suite, floor, room and "#12" are dropped: they identify a household.
_UNIT = re.compile(
    r"[\s,]+(?:#\s*\S+|(?:apt|apartment|unit|ste|suite|fl|floor|rm|room|bldg|building|spc|space|lot)"
    r"\b\.?\s*\S*).*$",
    re.IGNORECASE,
)
_DIRECTIONS = {"n", "s", "e", "w", "ne", "nw", "se", "sw", "nb", "sb", "eb", "wb"}


def round_point(point: Point) -> Point:
    return Point(round(point.lat, PUBLIC_DECIMALS), round(point.lon, PUBLIC_DECIMALS))


def _tidy_street(street: str) -> str:
    words = street.split()
    out = []
    for w in words:
        bare = w.strip(".,").lower()
        if bare in _DIRECTIONS:
            out.append(bare.upper())
        elif w.isupper() or w.islower():
            out.append(w[:1].upper() + w[1:].lower() if not w[:1].isdigit() else w.lower())
        else:
            out.append(w)
    return " ".join(out).strip(" ,")


def generalize_address(address: str | None) -> str | None:
    """"5312 24th Ave Ne Apt 3" -> "5300 block of 24th Ave NE".

    Intersections ("3rd Ave / Pine St") are already public and are kept. Anything we
    cannot recognise as "<number> <street>" or an intersection is withheld (None)
    rather than risk publishing an exact address.
    """
    if not address:
        return None
    text = " ".join(address.split())
    text = text.split(",")[0].strip()  # drop ", Seattle, WA 98105"
    if not text:
        return None
    if _INTERSECTION.search(text):
        parts = [_tidy_street(p) for p in _INTERSECTION.split(text) if p.strip()]
        if len(parts) >= 2 and not any(_HOUSE_NUMBER.match(p) for p in parts):
            return " / ".join(parts)
        return None
    m = _HOUSE_NUMBER.match(text)
    if not m:
        return None
    number, street = int(m.group(1)), _UNIT.sub("", m.group(2))
    street = _tidy_street(street)
    if not street or not re.search(r"[A-Za-z]", street):
        return None
    block = number - number % 100
    return f"{block} block of {street}"


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Phone numbers: 7+ digits with the usual separators, optional +country code.
_PHONE = re.compile(r"(?<![\w(])\+?\(?\d[\d\s().\-]{5,}\d(?![\w])")
MAX_NARRATIVE = 2000


def redact(text: str) -> str:
    """A narrative safe to show an editor: e-mail addresses and phone numbers masked."""
    text = _EMAIL.sub("[email]", text[:MAX_NARRATIVE])

    def phone(m: re.Match[str]) -> str:
        digits = sum(c.isdigit() for c in m.group(0))
        return "[phone]" if digits >= 7 else m.group(0)

    return _PHONE.sub(phone, text)
