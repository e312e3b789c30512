"""Quiet hours: a device's night, in its own time zone (pure)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from server.domain.categories import MOST_SEVERE


def in_quiet_hours(
    now: dt.datetime, timezone: str, start: dt.time | None, end: dt.time | None
) -> bool:
    """True when ``now`` falls in [start, end) local time; the span may cross midnight."""
    if start is None or end is None or start == end:
        return False
    local = now.astimezone(ZoneInfo(timezone)).time().replace(tzinfo=None)
    if start < end:
        return start <= local < end
    return local >= start or local < end


def allowed_now(
    category: str, now: dt.datetime, timezone: str, start: dt.time | None, end: dt.time | None
) -> bool:
    return category in MOST_SEVERE or not in_quiet_hours(now, timezone, start, end)
