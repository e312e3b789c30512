"""What of an incident's location may be shown to the public.

The exact address and point stay with the agency's editors and CPR responders; phones,
the feed and matching see a block-level address built from a street grammar and a point
rounded to about 100 m (for areas, the area widened to that grid: sql/0005), the way
crime maps publish.
"""

from __future__ import annotations

import re

from server.domain import streets
from server.domain.incident import Point

# 3 decimal places: 111 m of latitude, about 75 m of longitude at 47°N.
PUBLIC_DECIMALS = 3

# Text masked before an address is read: it identifies a person or a household, and
# its digits must not be mistaken for a house number.
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Phone numbers: 7+ digits with the usual separators, optional +country code.
_PHONE = re.compile(r"(?<![\w(])\+?\(?\d[\d\s().\-]{5,}\d(?![\w])")
_UNIT = re.compile(
    r"(?:#\s*[\w-]+|\b(?:apt|apartment|unit|ste|suite|fl|floor|rm|room|bldg|building|spc"
    r"|space|lot|trlr|dept|po\s+box|box)\b\.?\s*#?\s*[\w-]*)",
    re.IGNORECASE,
)
# "3rd Ave / Pine St", "3rd & Pine", "Aurora Ave N at N 85th St", "… @ …".
_INTERSECTION = re.compile(r"\s*[/&@]\s*|\s+(?:and|at)\s+", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z0-9']+|[^\sA-Za-z0-9']")
_HOUSE_NUMBER = re.compile(r"^\d{1,6}[A-Za-z]?$")
# A house number must not follow these: it would be the tail of a phone number, a
# range, a fraction or a unit.
_NOT_BEFORE_NUMBER = {"-", ".", "/", "#", "+", "(", ")"}
MAX_ADDRESS = 300

def round_point(point: Point) -> Point:
    return Point(round(point.lat, PUBLIC_DECIMALS), round(point.lon, PUBLIC_DECIMALS))


def _mask_phones(text: str, mask: str) -> str:
    """Phone-shaped runs of 7 digits or more replaced by ``mask``."""
    def phone(m: re.Match[str]) -> str:
        return mask if sum(c.isdigit() for c in m.group(0)) >= 7 else m.group(0)

    return _PHONE.sub(phone, text)


def _mask(text: str) -> str:
    return _UNIT.sub(" | ", _mask_phones(_EMAIL.sub(" | ", text), " | "))


def _tokens(text: str) -> list[str]:
    # "Ave." is "Ave"; a full stop elsewhere stays a separator.
    return _TOKEN.findall(re.sub(r"(?<=[A-Za-z])\.", "", text))


def _intersection(text: str) -> str | None:
    parts = _INTERSECTION.split(text)
    if len(parts) != 2:
        return None
    first = streets.parse_street(_tokens(parts[0]))
    second_tokens = _tokens(parts[1])
    found = streets.longest_street_prefix(second_tokens)
    if first is None or found is None:
        return None
    second, used = found
    rest = second_tokens[used:]
    # What follows the second street is dropped, but only after a break: "Pine St,
    # Seattle" or "Pine St - caller …", never "Pine St Jane" read as one street.
    if rest and rest[0] not in {",", "|", "(", "-", ";"}:
        return None
    return f"{first} / {second}"


def _block(text: str) -> str | None:
    tokens = _tokens(text)
    for i, token in enumerate(tokens):
        if not _HOUSE_NUMBER.match(token):
            continue
        if i and (tokens[i - 1] in _NOT_BEFORE_NUMBER or tokens[i - 1].isdigit()):
            continue
        found = streets.longest_street_prefix(tokens[i + 1:])
        if found is not None:
            number = int(token.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
            return f"{number - number % 100} block of {found[0]}"
    return None


def street_location(address: str | None) -> str | None:
    """The address as "<N>00 block of <street>" or "<street> / <street>", built from the
    street grammar (``server.domain.streets``): "5312 24th Ave Ne Apt 3" -> "5300 block
    of 24th Ave NE"; None when it is neither.

    Only recognized tokens are written out, in a standard spelling: a name, a phone
    number, a unit, a business or any other text around the address never is.
    """
    if not address:
        return None
    text = _mask(" ".join(address[:MAX_ADDRESS].split()))
    if _INTERSECTION.search(text):
        found = _intersection(text)
        if found is not None:
            return found
    return _block(text)


MAX_NARRATIVE = 2000
# Dates a narrative may give a birth date in: 04/12/1987, 4-12-87, 1987-04-12,
# "April 12, 1987", "12 Apr 1987" (any date: which one is a birth date can't be told).
_MONTH = (r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?")
_DATE_FORMS = (r"\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}[/.-]\d{1,2}[/.-]\d{1,2}"
               rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}"
               rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH},?\s+\d{{2,4}}")
_DATE = re.compile(rf"\b(?:{_DATE_FORMS})\b", re.IGNORECASE)
# "DOB 041287", "born 1987": a labelled birth date in any spelling of digits.
_DOB = re.compile(r"\b(?:dob|d\.o\.b|born(?:\s+on)?|birth\s*date|date\s+of\s+birth)\b"
                  rf"[\s:.]*(?:{_DATE_FORMS}|\d[\d/.-]{{3,9}})", re.IGNORECASE)


def _mask_addresses(text: str) -> str:
    """Every "<number> <street>" in free text masked, the number and the street."""
    tokens = list(_TOKEN.finditer(text))
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(tokens):
        if not _HOUSE_NUMBER.match(m.group(0)):
            continue
        found = streets.longest_street_prefix([t.group(0).rstrip(".") for t in tokens[i + 1:]])
        if found is not None:
            spans.append((m.start(), tokens[i + found[1]].end()))
    for start, end in reversed(spans):
        text = text[:start] + "[address]" + text[end:]
    return text


def redact(text: str) -> str:
    """A narrative safe to show an editor: e-mail addresses, phone numbers, dates (of
    birth, or any other: which one is can't be told) and street addresses masked."""
    text = _EMAIL.sub("[email]", text[:MAX_NARRATIVE])
    text = _DOB.sub("[dob]", text)
    text = _DATE.sub("[date]", text)
    return _mask_addresses(_mask_phones(text, "[phone]"))
