"""The delivery benchmark's parts, one job each (``python -m loadtest.bench_delivery``)."""

from __future__ import annotations

from pathlib import Path

LOADTEST = Path(__file__).resolve().parent.parent
REPO = LOADTEST.parent
WORKDIR = REPO / ".geopush" / "bench-delivery"
AGENCY = "bench-delivery"
TARGET_RATIO = 0.7
TARGET_RSS_MB = 150.0
STALL_TIMEOUT_S = 60.0
PUBLIC_LOCATION = "5300 block of 24th Ave NE"
