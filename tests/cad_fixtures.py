"""The conformance fixtures of examples/cad/, as tests use them.

Fixtures carry fixed times (2026-11-28T04:MM:SS, UTC) so a vendor's CI gets the same
answer every day (``geopush cad validate --now``); tests move them to the present,
keeping their order and spacing, as docs/cad-integration.md does with ``sed``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent / "examples" / "cad"
FORMATS = {"json": "application/json", "cap": "application/cap+xml",
           "eido": "application/eido+json"}
ANCHOR = dt.datetime(2026, 11, 28, 4, 0, tzinfo=dt.UTC)
# The time fixtures are judged at by the validator: a few minutes after the newest.
FIXTURE_NOW = ANCHOR + dt.timedelta(minutes=6)
SEATTLE_MAP = Path(__file__).resolve().parent.parent / "examples/call-types/seattle-fire.json"

# Revisions of one incident, in the order a CAD sends them; the rest stand alone.
SEQUENCE = ("point", "update", "cancel", "all-clear")

_STAMP = re.compile(rb"2026-11-28T04:(\d\d):(\d\d)")


@dataclass(frozen=True)
class Fixture:
    fmt: str
    name: str
    path: Path
    expected: dict[str, Any]

    @property
    def content_type(self) -> str:
        return FORMATS[self.fmt]

    @property
    def accept(self) -> bool:
        return self.path.parent.name == "accept"

    def body(self, base: dt.datetime | None = None) -> bytes:
        """The file's bytes; with ``base``, its times moved so 04:00:00 is ``base``."""
        raw = self.path.read_bytes()
        if base is None:
            return raw

        def moved(m: re.Match[bytes]) -> bytes:
            t = base + dt.timedelta(minutes=int(m.group(1)), seconds=int(m.group(2)))
            return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()

        return _STAMP.sub(moved, raw)

    def __str__(self) -> str:
        return f"{self.fmt}/{self.path.parent.name}/{self.name}"


def fixtures(kind: str, fmt: str | None = None) -> list[Fixture]:
    """``kind`` "accept" or "refuse"; the incident's revisions first, in order."""
    out = []
    for f in sorted(FORMATS) if fmt is None else [fmt]:
        for path in sorted((ROOT / f / kind).iterdir()):
            if path.name.endswith(".expected.json"):
                continue
            stem = path.name.rsplit(".", 1)[0]
            expected = json.loads((path.parent / f"{stem}.expected.json").read_text())
            out.append(Fixture(f, stem, path, expected))
    order = {name: i for i, name in enumerate(SEQUENCE)}
    return sorted(out, key=lambda x: (x.fmt, order.get(x.name, len(order)), x.name))
