"""The fan-out benchmark's parts, one job each (``python -m loadtest.bench_fanout``)."""

from __future__ import annotations

from loadtest.delivery import REPO

WORKDIR = REPO / ".geopush" / "bench-fanout"
AGENCY = "bench-fanout"
# Downtown Seattle (3rd Ave & Pike St): the centre of the large CAP area.
DOWNTOWN = (47.6097, -122.3387)
